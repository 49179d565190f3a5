#!/usr/bin/env python3
"""The benchmark tables of tools/gpu_check.sh's summary, from the JSON files its benchmark
stages leave in the check's result directory:

  bench_attention.json  lethe_bench_attention     sdpa_attention.json  torch_attention.py
  bench_lethe.json      lethe_bench_gpu           bench_torch.json     torch_gpu_step.py

It prints attention alone per shape and kernel variant with the ratio to torch's SDPA
FlashAttention backend, the engine's step with the ratio to transformers, and where the
step's time goes by op family. A missing or partial file gives what it holds.

  python3 tools/bench/gpu_bench_summary.py RESULT_DIR
"""
import json
import os
import sys


def load(res, name):
    try:
        with open(os.path.join(res, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def num(x, fmt, width):
    """x formatted, a string (such as "nan") as it is, anything else as n/a."""
    if isinstance(x, (int, float)):
        return f"{x:{width}{fmt}}"
    return f"{x if isinstance(x, str) else 'n/a':>{width}}"


def attention(res):
    lethe, sdpa = load(res, "bench_attention.json"), load(res, "sdpa_attention.json")
    if not lethe and not sdpa:
        return
    dev = (lethe or sdpa).get("device", "?")
    print(f"\nattention alone on {dev}: causal, head_dim 128, bf16; TFLOP/s by FlashAttention's count (forward "
          f"4 B H T^2 D / 2, backward 2.5x); max|d..|: largest difference from the default kernels' outputs")
    peer = {r["shape"]: r for r in (sdpa or {}).get("results", [])}
    rows = (lethe or {}).get("results", [])
    shapes = list(dict.fromkeys([r["shape"] for r in rows] + list(peer)))
    default = (lethe or {}).get("default_variant")
    print(f"{'shape':20} {'kernels':38} {'fwd':>6} {'bwd':>6} {'fwd+bwd':>7} {'max|do|':>8} {'max|dqkv|':>9} "
          f"{'vs SDPA':>7}")
    for shape in shapes:
        p = peer.get(shape, {})
        base = p.get("fwd_bwd_tflops")
        label = shape
        for r in (r for r in rows if r["shape"] == shape):
            name = r["variant"] + (" (default)" if r["variant"] == default else "")
            if "error" in r:
                print(f"{label:20} {name:38} ERROR: {r['error'][:100]}")
            else:
                ratio = num(r["fwd_bwd_tflops"] / base, ".2f", 7) if base else f"{'n/a':>7}"
                print(f"{label:20} {name:38} {r['fwd_tflops']:6.1f} {r['bwd_tflops']:6.1f} "
                      f"{r['fwd_bwd_tflops']:7.1f} {num(r.get('max_abs_diff_o'), '.1e', 8)} "
                      f"{num(r.get('max_abs_diff_dqkv'), '.1e', 9)} {ratio}")
            label = ""
        who = f"SDPA flash (torch {sdpa.get('torch', '?')})" if sdpa else "SDPA flash"
        if "error" in p:
            print(f"{label:20} {who:38} ERROR: {p['error'][:100]}")
        elif p:
            extra = "" if p.get("gqa") in (None, "none", "enable_gqa") else f"  ({p['gqa']})"
            print(f"{label:20} {who:38} {p['fwd_tflops']:6.1f} {p['bwd_tflops']:6.1f} {p['fwd_bwd_tflops']:7.1f}"
                  f"{extra}")
        else:
            print(f"{label:20} {who:38} not run (see the stages above)")


def step(res):
    lethe, torch = load(res, "bench_lethe.json"), load(res, "bench_torch.json")
    if not lethe:
        return
    print(f"\nengine step (GA+GD, LlamaModel + Optimizer on CUDA, bf16) on {lethe.get('device')}: peak assumed "
          f"{lethe.get('peak_tflops', 0):.0f} TFLOP/s dense bf16 ({lethe.get('peak_source', 'n/a')}); attention "
          f"{lethe.get('attention_kernels', 'n/a')}")
    peer = {r["case"]: r for r in (torch or {}).get("results", [])}
    print(f"{'case':20} {'layers':>6} {'lethe tok/s':>12} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8} "
          f"{'plan x':>6} {'torch tok/s':>12} {'ratio':>6}")
    for r in lethe.get("results", []):
        o = peer.get(r["case"], {})
        tt = o.get("tokens_per_s")
        tts = f"{tt:12.0f}" if tt else f"{o.get('error', 'n/a')[:12]:>12}"
        if "error" in r:
            print(f"{r['case']:20} {r['layers']:6d} ERROR: {r['error'][:120]}")
            continue
        ratio = f"{r['tokens_per_s'] / tt:6.2f}" if tt else f"{'n/a':>6}"
        mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") else f"{'n/a':>6}"
        plan = (f"{r['tensor_peak_gib'] / r['plan_gib']:6.3f}" if r.get("plan_gib") and r.get("tensor_peak_gib")
                else f"{'n/a':>6}")
        print(f"{r['case']:20} {r['layers']:6d} {r['tokens_per_s']:12.0f} {r['model_tflops']:8.1f} {mfu:>6} "
              f"{num(r.get('peak_gib'), '.1f', 8)} {plan} {tts} {ratio}")
    print("(peak GiB: the caching allocator's reservation; plan x: the tensors' own peak over `lethe plan`'s "
          "total for the case, which should be within 10%)")
    print("(ratio: lethe tokens/s over transformers' (LlamaForCausalLM, SDPA, fused AdamW, "
          f"{(torch or {}).get('precision', 'precision not recorded')}) on the same cases; MFU counts 6 x the "
          "matrix parameters plus causal attention, 6 L T d per token: half of the 12 L T d some report)")
    shares(lethe.get("results", []))


def shares(results):
    cases = [r for r in results if "op_shares" in r]
    if not cases:
        return
    print("\nwhere the engine step's time goes, % of a separate step synchronised before and after every op "
          "(tokens/s above comes from steps without those waits):")
    families = list(dict.fromkeys(f["family"] for r in cases for f in r["op_shares"]["families"]))
    print(f"{'op family':32} " + " ".join(f"{r['case']:>16}" for r in cases))
    for fam in families:
        cells = []
        for r in cases:
            f = next((f for f in r["op_shares"]["families"] if f["family"] == fam), None)
            cells.append(f"{100 * f['share']:15.1f}%" if f else f"{'':>16}")
        label = {"other": "other (copies, casts, host)", "communication": "communication (one GPU)"}.get(fam, fam)
        print(f"{label:32} " + " ".join(cells))
    print(f"{'profiled step, ms':32} " + " ".join(f"{r['op_shares']['step_ms']:16.1f}" for r in cases))


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    attention(sys.argv[1])
    step(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
