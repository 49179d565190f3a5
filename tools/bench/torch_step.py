#!/usr/bin/env python3
"""Reference for lethe_bench_cpu: forward+backward tokens/s of transformers'
LlamaForCausalLM (f32, SDPA attention) on the same cases, flags and JSON output."""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

CASES = {  # name: (preset, one_layer, default batch, default seq)
    "tiny": ("tiny.yaml", False, 8, 256),
    "llama2-7b-layer": ("llama2-7b.yaml", True, 1, 256),
    "yi-6b-layer": ("yi-6b.yaml", True, 1, 256),
}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _scalar(s):
    s = s.strip().strip('"').strip("'")
    if s in ("true", "false"):
        return s == "true"
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def load_preset(path):
    try:
        import yaml
        with open(path) as f:
            return yaml.safe_load(f)
    except ImportError:
        pass
    # The presets are flat `key: value` lines plus one nested `rope_scaling:` block.
    out, section = {}, None
    with open(path) as f:
        for line in f:
            body = line.split("#", 1)[0].rstrip()
            if not body.strip():
                continue
            key, _, val = body.strip().partition(":")
            if line[0] in " \t" and section is not None:
                section[key] = _scalar(val)
            elif val.strip():
                out[key], section = _scalar(val), None
            else:
                out[key] = section = {}
    return out


def hf_config(p, n_layers):
    rope = {"rope_type": "default", "rope_theta": float(p.get("rope_theta", 10000.0))}
    rs = p.get("rope_scaling")
    if rs:  # same fields as lethe's llama3 scaling
        rope.update(rope_type=rs["type"], factor=float(rs["factor"]),
                    low_freq_factor=float(rs["low_freq_factor"]), high_freq_factor=float(rs["high_freq_factor"]),
                    original_max_position_embeddings=int(rs["original_max_position_embeddings"]))
    return LlamaConfig(
        vocab_size=p["vocab_size"], hidden_size=p["dim"], intermediate_size=p["ffn_dim"],
        num_hidden_layers=n_layers, num_attention_heads=p["n_heads"],
        num_key_value_heads=p.get("n_kv_heads", p["n_heads"]), head_dim=p.get("head_dim") or None,
        rms_norm_eps=float(p.get("norm_eps", 1e-5)), rope_parameters=rope,
        max_position_embeddings=p.get("max_seq_len", 2048), tie_word_embeddings=bool(p.get("tie_embeddings")),
        initializer_range=float(p.get("init_std", 0.02)), attention_bias=False, mlp_bias=False,
        attn_implementation="sdpa")


def train_flops_per_token(p, n_layers, T):
    """LlamaConfig::train_flops_per_token: 6 * matmul params + causal attention."""
    C, F, V = p["dim"], p["ffn_dim"], p["vocab_size"]
    H = p["n_heads"]
    hd = p.get("head_dim") or C // H
    kv = p.get("n_kv_heads", H) * hd
    layer = C * H * hd * 2 + C * kv * 2 + 3 * C * F
    return 6.0 * (n_layers * layer + V * C) + 6.0 * n_layers * T * H * hd


def run_case(name, args):
    preset, one_layer, batch, seq = CASES[name]
    p = load_preset(os.path.join(args.configs, preset))
    n_layers = 1 if one_layer else p["n_layers"]
    B, T = args.batch or batch, args.seq or seq
    torch.manual_seed(1234)
    model = LlamaForCausalLM(hf_config(p, n_layers)).float().train()
    g = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, p["vocab_size"], (B, T), generator=g)
    # transformers shifts labels itself: labels = tokens predicts the next token, last ignored.
    times, loss = [], None
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=False)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        t1 = time.perf_counter()
        if i >= args.warmup:
            times.append((t1 - t0) * 1e3)
    med = statistics.median_high(times)  # the element lethe_bench_cpu picks
    tok_s = B * T / (med / 1e3)
    gflops = tok_s * train_flops_per_token(p, n_layers, T) / 1e9
    if args.json:
        print(json.dumps({"case": name, "batch": B, "seq": T, "tokens_per_s": round(tok_s, 2),
                          "ms_per_step": round(med, 3), "model_gflops_per_s": round(gflops, 3)}))
    else:
        print(f"{name:<16} {B}x{T}  {tok_s:10.1f} tok/s  {med:9.2f} ms/step  {gflops:8.2f} GFLOP/s  "
              f"loss {loss.item():.4f}")
    sys.stdout.flush()
    del model


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--case", default="all", choices=["all", *CASES])
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--configs", default=os.path.join(REPO, "configs", "models"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for name in CASES:
        if args.case in ("all", name):
            run_case(name, args)


if __name__ == "__main__":
    main()
