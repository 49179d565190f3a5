#!/usr/bin/env python3
"""SmolLM2-135M-Instruct golden fixture: transformers' own loading of the same GGUF.

    bash tools/models/fetch_smollm2.sh          # models/smollm2-135m-instruct.gguf
    python3 tools/golden/make_smollm2_golden.py  # needs torch, transformers, gguf, safetensors, h5py

Writes tests/golden/smollm2/:
  prompts.safetensors  per prompt p: ids.p (I32 [T]), last_logits.p (F32 [V]: logits at
                       the last position), next_logprob.p (F32 [T-1]: log p(token t+1 | ..t)),
                       argmax.p (I32 [T]); metadata: gguf sha256, prompt texts, decoded texts
  prose.h5             a lethe token dataset (SmolLM2 tokenizer) of public-domain Austen text
  prose.json           transformers' mean NLL and perplexity on prose.h5 with the same
                       chunking lethe eval uses (seq_len below, each next-token pair once)
"""
import argparse
import hashlib
import json
import os
import sys

import h5py
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "Machine unlearning removes the influence of specific training documents",
    "It is a truth universally acknowledged, that a single man",
]
SEQ_LEN = 128
PROSE_TOKENS = 1024


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models", "smollm2-135m-instruct.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "golden", "smollm2"))
    args = ap.parse_args()
    if not os.path.exists(args.gguf):
        sys.exit(f"{args.gguf}: not found; run tools/models/fetch_smollm2.sh first")
    torch.manual_seed(0)
    d, f = os.path.dirname(os.path.abspath(args.gguf)), os.path.basename(args.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    os.makedirs(args.out, exist_ok=True)

    tensors, decoded = {}, []
    with torch.no_grad():
        for p, text in enumerate(PROMPTS):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids])
            logits = model(x).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)
            tensors[f"ids.{p}"] = torch.tensor(ids, dtype=torch.int32)
            tensors[f"last_logits.{p}"] = logits[-1].contiguous()
            tensors[f"next_logprob.{p}"] = lp[:-1].gather(1, x[0, 1:, None])[:, 0].contiguous()
            tensors[f"argmax.{p}"] = logits.argmax(-1).to(torch.int32)
            decoded.append(tok.decode(ids))
    meta = {"gguf_sha256": sha256_file(args.gguf), "prompts": json.dumps(PROMPTS), "decoded": json.dumps(decoded),
            "generator": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}"}
    save_file(tensors, os.path.join(args.out, "prompts.safetensors"), metadata=meta)

    # Prose: the first PROSE_TOKENS tokens of a held-out Austen chapter (public domain).
    with open(os.path.join(ROOT, "data", "corpora", "books", "holdout.jsonl")) as fh:
        text = json.loads(fh.readline())["text"]
    ids = tok(text, add_special_tokens=False)["input_ids"][:PROSE_TOKENS]
    tmp = os.path.join(args.out, "prose.h5.tmp")
    with h5py.File(tmp, "w") as h:
        h.create_dataset("tokens", data=np.array(ids, dtype=np.int32))
        h.create_dataset("doc_offsets", data=np.array([0, len(ids)], dtype=np.int64))
        h.create_dataset("doc_sha256", data=np.frombuffer(hashlib.sha256(tok.decode(ids).encode()).digest(),
                                                          dtype=np.uint8)[None, :])
        h.attrs["format"] = "lethe-tokens"
        h.attrs["version"] = np.int64(1)
        h.attrs["tokenizer"] = "gguf:" + meta["gguf_sha256"][:16]
        h.attrs["vocab_size"] = np.int64(len(tok))
        h.attrs["source"] = "Jane Austen (public domain), first held-out chapter"
        h.attrs["bos_id"] = np.int64(-1)
        h.attrs["eos_id"] = np.int64(-1)
    os.replace(tmp, os.path.join(args.out, "prose.h5"))
    # Same chunking as lethe's sampler: chunk k predicts tokens kT+1 .. (k+1)T.
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, SEQ_LEN):
            chunk = ids[s:s + SEQ_LEN + 1]
            logits = model(torch.tensor([chunk[:-1]])).logits[0].double()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(chunk[1:])[:, None])
            nll -= lp.sum().item()
            n += len(chunk) - 1
    with open(os.path.join(args.out, "prose.json"), "w") as fh:
        json.dump({"seq_len": SEQ_LEN, "tokens": n, "mean_nll": nll / n, "perplexity": float(np.exp(nll / n)),
                   "gguf_sha256": meta["gguf_sha256"]}, fh, indent=2)
        fh.write("\n")
    print(f"wrote {args.out}: {len(PROMPTS)} prompts, prose {n} tokens, perplexity {np.exp(nll / n):.3f}")


if __name__ == "__main__":
    main()
