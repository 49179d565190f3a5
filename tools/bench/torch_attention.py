#!/usr/bin/env python3
"""Peer for lethe_bench_attention: causal attention alone with torch's
scaled_dot_product_attention, its FlashAttention backend forced, bf16, on the same shapes
(head_dim 128; H = 32 with KV = 32 and KV = 8; T = 1024, 2048, 4096 with B * T = 16384;
--quick: T = 4096, KV = 32 only). Reports forward, backward and forward+backward TFLOP/s
with FlashAttention's FLOP count (causal forward 4 B H T^2 D / 2, backward 2.5x the
forward), as lethe's benchmark does, and writes JSON that tools/gpu_check.sh puts beside
lethe's rows. Exits 2 with a message when torch or a GPU is missing."""
import argparse
import json
import sys

D, TOKENS = 128, 16384


def shapes(quick):
    out = []
    for kv in (32, 8):
        for T in (1024, 2048, 4096):
            if not quick or (T == 4096 and kv == 32):
                out.append((TOKENS // T, T, 32, kv))
    return out


def shape_name(B, T, H, KV):  # the same name lethe_bench_attention gives the shape
    return f"H{H}/KV{KV} T{T} B{B}"


def fwd_flops(B, T, H):
    return 4.0 * B * H * T * T * D / 2


def time_ms(torch, fn, target_s):
    """Milliseconds per call: one warm-up call, then enough calls for about target_s."""
    fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    one = max(a.elapsed_time(b), 1e-3)
    n = int(min(max(target_s * 1e3 / one, 3), 50))
    a.record()
    for _ in range(n):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / n


def flash_only(torch):
    """A context that lets SDPA use only its FlashAttention backend."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    except ImportError:  # torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False)


def run_shape(torch, B, T, H, KV, target_s):
    F = torch.nn.functional
    g = torch.Generator(device="cuda").manual_seed(11)
    # Stored [B, T, heads, D] as lethe stores them (and transformers' projections give
    # them), viewed as [B, heads, T, D] for SDPA.
    def make(heads, grad):
        x = (torch.rand(B, T, heads, D, generator=g, device="cuda") * 2 - 1) * 3**0.5  # std 1, as lethe's fill
        return x.to(torch.bfloat16).transpose(1, 2).detach().requires_grad_(grad)
    q, k, v = make(H, True), make(KV, True), make(KV, True)
    dout = make(H, False)
    gqa = "enable_gqa" if KV != H else "none"

    def sdpa():
        nonlocal gqa
        if KV == H:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except TypeError:  # torch < 2.5: no enable_gqa, repeat the kv heads
            gqa = "k/v repeated (torch without enable_gqa)"
            r = H // KV
            return F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1),
                                                  is_causal=True)

    with flash_only(torch):
        with torch.no_grad():
            fwd_ms = time_ms(torch, sdpa, target_s)
        out = sdpa()
        bwd_ms = time_ms(torch, lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), target_s)
        del out
        fwd_bwd_ms = time_ms(torch, lambda: torch.autograd.grad(sdpa(), (q, k, v), dout), target_s)
    f = fwd_flops(B, T, H)
    return {"shape": shape_name(B, T, H, KV), "batch": B, "seq": T, "heads": H, "kv_heads": KV, "head_dim": D,
            "gqa": gqa, "fwd_ms": round(fwd_ms, 4), "bwd_ms": round(bwd_ms, 4), "fwd_bwd_ms": round(fwd_bwd_ms, 4),
            "fwd_tflops": round(f / (fwd_ms / 1e3) / 1e12, 2),
            "bwd_tflops": round(2.5 * f / (bwd_ms / 1e3) / 1e12, 2),
            "fwd_bwd_tflops": round(3.5 * f / (fwd_bwd_ms / 1e3) / 1e12, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T = 4096, H = KV = 32 only")
    ap.add_argument("--json", help="write the results here (rewritten after every shape)")
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print(f"torch_attention: torch is not installed ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"torch_attention: no CUDA device (torch {torch.__version__})", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    print(f"device {device}, torch {torch.__version__}; SDPA FlashAttention backend, causal, bf16, head_dim {D}; "
          f"TFLOP/s with FlashAttention's FLOP count")
    print(f"{'shape':22} {'fwd':>7} {'bwd':>7} {'fwd+bwd':>8}")
    doc = {"device": device, "torch": torch.__version__, "backend": "flash", "causal": True, "head_dim": D,
           "flops": "FlashAttention's: forward 4 B H T^2 D / 2 (causal), backward 2.5x forward", "results": []}
    target_s = 0.05 if args.quick else 0.15
    bad = False
    for B, T, H, KV in shapes(args.quick):
        try:
            r = run_shape(torch, B, T, H, KV, target_s)
            print(f"{r['shape']:22} {r['fwd_tflops']:7.1f} {r['bwd_tflops']:7.1f} {r['fwd_bwd_tflops']:8.1f}"
                  + ("" if r["gqa"] in ("none", "enable_gqa") else f"  ({r['gqa']})"))
        except RuntimeError as e:  # the flash backend refused the shape or the card, or out of memory
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            r = {"shape": shape_name(B, T, H, KV), "error": msg}
            print(f"{r['shape']:22} {msg}")
            bad = True
        torch.cuda.empty_cache()
        doc["results"].append(r)
        sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
