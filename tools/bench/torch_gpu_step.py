#!/usr/bin/env python3
"""Peer for lethe_bench_gpu: the same GA+GD forget+retain step with transformers'
LlamaForCausalLM on the GPU (SDPA attention, same config, same batch: one forget and one
retain sequence, loss = -NLL(forget) + NLL(retain), grad-norm clipping at 1.0, AdamW).
Precision as HF Trainer's bf16=True runs it: fp32 weights, gradients and AdamW state with
the forward and backward under torch.autocast(bf16), the counterpart of lethe's fp32
master weights behind bf16 compute (--pure-bf16: bf16 weights and optimizer state, a
lighter peer than either). Reads lethe's results (--match) so both run the same cases and
layer counts; writes JSON after every case (a stage cut short keeps what it measured)
that tools/gpu_check.sh turns into the ratio table."""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_step import REPO, hf_config, load_preset, train_flops_per_token  # noqa: E402

PRESETS = {"llama2-7b": "llama2-7b.yaml", "yi-6b": "yi-6b.yaml"}


def run_case(model_name, n_layers, batch, T, iters, warmup, pure_bf16):
    p = load_preset(os.path.join(REPO, "configs", "models", PRESETS[model_name]))
    p["max_seq_len"] = max(int(p.get("max_seq_len", 2048)), T)
    cfg = hf_config(p, n_layers)
    cfg.use_cache = False  # training: no key/value cache built on every forward
    torch.manual_seed(1234)
    torch.set_default_dtype(torch.bfloat16 if pure_bf16 else torch.float32)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).train()
    finally:
        torch.set_default_dtype(torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                            fused=True)
    V = p["vocab_size"]
    g = torch.Generator(device="cuda").manual_seed(7)
    tokens = torch.randint(0, V, (batch, T), generator=g, device="cuda")
    n_forget = max(1, batch // 2)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not pure_bf16):
            logits = model(input_ids=tokens, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none").view(batch, T - 1)
        loss = -nll[:n_forget].mean() + (nll[n_forget:].mean() if batch > n_forget else 0.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    times = []
    loss = None
    for i in range(warmup + iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    tok_s = batch * T / (ms / 1e3)
    tflops = tok_s * train_flops_per_token(p, n_layers, T) / 1e12
    peak_gib = torch.cuda.max_memory_reserved() / 2**30  # as lethe reports its allocator's peak
    del model, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"ms_per_step": round(ms, 3), "tokens_per_s": round(tok_s, 1), "model_tflops": round(tflops, 2),
            "loss": loss.detach().item(), "peak_gib": round(peak_gib, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--match", help="lethe_bench_gpu JSON: run its cases with its layer counts")
    ap.add_argument("--layers", type=int, default=8, help="layers when there is no --match")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pure-bf16", action="store_true", help="bf16 weights and optimizer state, no autocast")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_gpu_step: no CUDA device", file=sys.stderr)
        return 2
    if args.match:
        with open(args.match) as f:
            # A case lethe could not fit one layer of has nothing to compare with.
            cases = [(r["case"], r["layers"], r["batch"], r["seq"]) for r in json.load(f)["results"] if r["layers"] > 0]
    else:
        seqs = [2048] if args.quick else [2048, 4096]
        models = ["llama2-7b"] if args.quick else list(PRESETS)
        cases = [(f"{m}/T{T}", args.layers, args.batch, T) for m in models for T in seqs]
    iters = 3 if args.quick else args.iters
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    precision = "pure bf16 (bf16 weights and AdamW state)" if args.pure_bf16 else \
        "autocast bf16 (fp32 weights and AdamW state, as HF Trainer bf16=True)"
    print(f"precision: {precision}")
    results = []
    for name, layers, batch, T in cases:
        try:
            r = run_case(name.split("/")[0], layers, batch, T, iters, args.warmup, args.pure_bf16)
            r.update(case=name, layers=layers, batch=batch, seq=T)
            print(f"{name:<20} layers {layers:2d}  {batch}x{T}  {r['ms_per_step']:8.2f} ms/step  "
                  f"{r['tokens_per_s']:9.0f} tok/s  {r['model_tflops']:6.1f} TFLOP/s  loss {r['loss']:.4f}  "
                  f"peak {r['peak_gib']:.1f} GiB")
        except torch.cuda.OutOfMemoryError:
            r = {"case": name, "layers": layers, "error": "out of memory"}
            print(f"{name:<20} layers {layers:2d}  out of memory")
        except Exception as e:  # one case's failure must not lose the others' numbers
            r = {"case": name, "layers": layers, "error": f"{type(e).__name__}: {e}"[:300]}
            print(f"{name:<20} layers {layers:2d}  error: {r['error']}")
        torch.cuda.empty_cache()
        results.append(r)
        sys.stdout.flush()
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "precision": precision, "results": results}, f,
                          indent=1)
            os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
