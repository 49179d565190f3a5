#!/usr/bin/env python3
"""Writes a Hugging Face tokenizer.json from the vocabulary a lethe checkpoint carries
(`lethe convert gguf-to-lethe` stores the GGUF's tokens and merges in the checkpoint's
tokenizer.json, format "lethe-tokenizer"), so `tools/tokenize --tokenizer` can encode
documents exactly as the model was trained.

    tools/models/hf_tokenizer.py CHECKPOINT_DIR_OR_JSON --out tokenizer.json

Supported: byte-level BPE ("gpt2" model) with the pre-tokenizers "smollm" (single digits,
then GPT-2's split), "gpt2"/"default" (GPT-2's split). Anything else is refused with an
error rather than encoded approximately. Needs the `tokenizers` package.
"""
import argparse
import json
import os
import sys


def pre_tokenizer(pre, pre_tokenizers):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt2", "default", ""):
        return byte_level
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a lethe checkpoint directory or its tokenizer.json")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    src = os.path.join(args.source, "tokenizer.json") if os.path.isdir(args.source) else args.source
    try:
        with open(src, encoding="utf-8") as f:
            lt = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"{src}: cannot read a lethe tokenizer: {e}")
    if lt.get("format") != "lethe-tokenizer":
        sys.exit(f"{src}: not a lethe-tokenizer file (format {lt.get('format')!r})")
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        sys.exit("hf_tokenizer.py needs the `tokenizers` package (pip install tokenizers)")
    if lt.get("model") != "gpt2":
        sys.exit(f"{src}: tokenizer model {lt.get('model')!r} is not supported (byte-level BPE 'gpt2' only)")
    pt = pre_tokenizer(lt.get("pre", ""), pre_tokenizers)
    if pt is None:
        sys.exit(f"{src}: pre-tokenizer {lt.get('pre')!r} is not supported (smollm, gpt2)")
    tokens, merges = lt["tokens"], lt.get("merges", [])
    if not merges:
        sys.exit(f"{src}: no BPE merges; cannot encode")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        sys.exit(f"{src}: duplicate vocabulary entries")
    pairs = []
    for k, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        if not sep or not a or not b:
            sys.exit(f"{src}: merge {k} is not 'left right': {m!r}")
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tok.pre_tokenizer = pt
    tok.decoder = decoders.ByteLevel()
    types = lt.get("token_types", [])
    special = [tokens[i] for i, t in enumerate(types) if t == 3]  # GGUF CONTROL tokens
    if special:
        tok.add_special_tokens(special)
    tmp = args.out + ".tmp"
    tok.save(tmp)
    os.replace(tmp, args.out)
    cfg = {k: tokens[lt[k + "_id"]] for k in ("bos", "eos") if 0 <= lt.get(k + "_id", -1) < len(tokens)}
    with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "tokenizer_config.json"), "w") as f:
        json.dump({f"{k}_token": v for k, v in cfg.items()}, f)
    print(f"wrote {args.out}: {len(tokens)} tokens, {len(pairs)} merges, pre-tokenizer {lt.get('pre')!r}")


if __name__ == "__main__":
    main()
