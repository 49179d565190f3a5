#!/usr/bin/env python3
"""Generate float64 golden fixtures for the lethe Llama runtime.

For each variant this builds a small random ``transformers.LlamaForCausalLM``,
runs one batch and records the logits, loss, per-token log-probabilities, all
parameters, their gradients, and the parameters after three clipped AdamW
steps.  Everything lands in one ``.safetensors`` file per variant, with the
model/optimizer settings stored as JSON strings in the file metadata.

Usage:
    pip install torch transformers safetensors
    python3 tools/golden/make_llama_golden.py --out tests/golden

Precision notes
---------------
``model.double()`` alone does *not* make transformers' Llama compute in
float64.  Several places hard-code float32:

* ``LlamaRotaryEmbedding`` builds ``inv_freq`` and cos/sin in float32;
* ``LlamaRMSNorm.forward`` casts the activations to float32;
* ``eager_attention_forward`` runs the softmax with ``dtype=torch.float32``;
* the causal-LM loss (``ForCausalLMLoss``) calls ``logits.float()``.

This script replaces those four pieces with float64 versions of the same
formulas (each is checked against the stock float32 path of the same model),
so the fixture is exact float64 math.  It also checks the patched model against
an independent plain-torch reference forward.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import struct
import types

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

B = 2
T = 12
IGNORE = -100

ADAMW = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, steps=3)

VARIANTS = {
    "llama_gqa_untied": dict(
        seed=1234,
        vocab_size=96,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        ffn_dim=160,
        norm_eps=1e-5,
        rope_theta=10000.0,
        tie_embeddings=False,
        rope_scaling=dict(
            type="llama3",
            factor=4.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
    "llama_tied": dict(
        seed=4321,
        vocab_size=80,
        dim=48,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        head_dim=12,
        ffn_dim=128,
        norm_eps=1e-6,
        rope_theta=500000.0,
        tie_embeddings=True,
        rope_scaling=None,
    ),
}


# ---------------------------------------------------------------------------
# Config / RoPE
# ---------------------------------------------------------------------------

def make_hf_config(v: dict) -> LlamaConfig:
    # transformers 5.x: rope settings live in `rope_parameters` (which also
    # carries rope_theta); `rope_scaling` is a deprecated alias.
    rope = {"rope_type": "default", "rope_theta": v["rope_theta"]}
    rs = v["rope_scaling"]
    if rs is not None:
        rope = {
            "rope_type": rs["type"],
            "rope_theta": v["rope_theta"],
            "factor": rs["factor"],
            "low_freq_factor": rs["low_freq_factor"],
            "high_freq_factor": rs["high_freq_factor"],
            "original_max_position_embeddings": rs["original_max_position_embeddings"],
        }
    cfg = LlamaConfig(
        vocab_size=v["vocab_size"],
        hidden_size=v["dim"],
        intermediate_size=v["ffn_dim"],
        num_hidden_layers=v["n_layers"],
        num_attention_heads=v["n_heads"],
        num_key_value_heads=v["n_kv_heads"],
        head_dim=v["head_dim"],
        hidden_act="silu",
        max_position_embeddings=64,  # above original_max_position_embeddings, as llama3 expects
        rms_norm_eps=v["norm_eps"],
        tie_word_embeddings=v["tie_embeddings"],
        rope_parameters=rope,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        pad_token_id=None,
    )
    cfg._attn_implementation = "eager"
    return cfg


def inv_freq_f64(v: dict, scaled: bool = True) -> torch.Tensor:
    d = v["head_dim"]
    i = torch.arange(0, d, 2, dtype=torch.float64)
    inv = v["rope_theta"] ** (-i / d)
    rs = v["rope_scaling"]
    if rs is None or not scaled:
        return inv
    assert rs["type"] == "llama3"
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    out = torch.empty_like(inv)
    for k in range(inv.numel()):
        f = inv[k].item()
        wavelen = 2.0 * math.pi / f
        if wavelen < old_ctx / hi:
            out[k] = f
        elif wavelen > old_ctx / lo:
            out[k] = f / factor
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out[k] = (1.0 - smooth) * f / factor + smooth * f
    return out


def rope_cos_sin(inv_freq: torch.Tensor, batch: int, seqlen: int):
    pos = torch.arange(seqlen, dtype=torch.float64)
    freqs = pos[:, None] * inv_freq[None, :]            # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)              # [T, D]  (rotate_half layout)
    cos = emb.cos()[None].expand(batch, seqlen, -1).contiguous()
    sin = emb.sin()[None].expand(batch, seqlen, -1).contiguous()
    return cos, sin


# ---------------------------------------------------------------------------
# float64 patches (only active on modules flagged with `_golden_f64`)
# ---------------------------------------------------------------------------

_STOCK_EAGER = modeling_llama.eager_attention_forward
_F64_ATTN_CALLS = [0]


def _eager_attention_forward_f64(module, query, key, value, attention_mask, scaling,
                                 dropout=0.0, **kwargs):
    if not getattr(module, "_golden_f64", False):
        return _STOCK_EAGER(module, query, key, value, attention_mask, scaling,
                            dropout=dropout, **kwargs)
    _F64_ATTN_CALLS[0] += 1
    key_states = modeling_llama.repeat_kv(key, module.num_key_value_groups)
    value_states = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, float("-inf"))
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)  # stays in query dtype (float64)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


# LlamaAttention.forward looks this name up in the module globals at call time
# (ALL_ATTENTION_FUNCTIONS.get_interface("eager", eager_attention_forward)).
modeling_llama.eager_attention_forward = _eager_attention_forward_f64


def _rmsnorm_forward_f64(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def patch_model_f64(model: LlamaForCausalLM, inv_freq: torch.Tensor) -> None:
    rot = model.model.rotary_emb
    assert float(rot.attention_scaling) == 1.0

    def rotary_forward(x, position_ids):
        # Same contract as LlamaRotaryEmbedding.forward: (cos, sin), each
        # [batch, seq, head_dim] = cat(freqs, freqs); positions must be 0..T-1.
        bsz, seqlen = x.shape[0], x.shape[1]
        expect = torch.arange(seqlen, device=position_ids.device)
        assert torch.equal(position_ids.reshape(-1, seqlen)[0].to(expect.dtype), expect)
        cos, sin = rope_cos_sin(inv_freq, bsz, seqlen)
        return cos.to(x.dtype), sin.to(x.dtype)

    rot.forward = rotary_forward
    for m in model.modules():
        if isinstance(m, modeling_llama.LlamaRMSNorm):
            m.forward = types.MethodType(_rmsnorm_forward_f64, m)
        if isinstance(m, modeling_llama.LlamaAttention):
            m._golden_f64 = True


# ---------------------------------------------------------------------------
# Independent plain-torch reference forward (cross-check of conventions)
# ---------------------------------------------------------------------------

def reference_logits(W: dict, ids: torch.Tensor, v: dict, inv_freq: torch.Tensor) -> torch.Tensor:
    H, KV, D, eps = v["n_heads"], v["n_kv_heads"], v["head_dim"], v["norm_eps"]
    bsz, seqlen = ids.shape

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rot(x, cos, sin):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    cos, sin = rope_cos_sin(inv_freq, bsz, seqlen)
    cos, sin = cos[:, None], sin[:, None]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()
    x = W["model.embed_tokens.weight"][ids.long()]
    for l in range(v["n_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(bsz, seqlen, H, D).transpose(1, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(bsz, seqlen, KV, D).transpose(1, 2)
        val = (h @ W[p + "self_attn.v_proj.weight"].T).view(bsz, seqlen, KV, D).transpose(1, 2)
        q, k = rot(q, cos, sin), rot(k, cos, sin)
        k = k.repeat_interleave(H // KV, dim=1)
        val = val.repeat_interleave(H // KV, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        s = s.masked_fill(~causal, float("-inf")).softmax(-1)
        a = (s @ val).transpose(1, 2).reshape(bsz, seqlen, H * D)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"])
    head = W["model.embed_tokens.weight"] if v["tie_embeddings"] else W["lm_head.weight"]
    return x @ head.T


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def ce_loss_f64(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(),
                           ignore_index=IGNORE, reduction="mean")


def hf_labels(targets: torch.Tensor) -> torch.Tensor:
    # transformers shifts labels internally: position t predicts labels[t+1].
    lab = torch.full_like(targets, IGNORE, dtype=torch.long)
    lab[:, 1:] = targets[:, :-1].long()
    assert bool((targets[:, -1] == IGNORE).all())
    return lab


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def snap(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous()


def total_norm(grads) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


# ---------------------------------------------------------------------------
# One variant
# ---------------------------------------------------------------------------

def build_variant(name: str, v: dict):
    V = v["vocab_size"]
    cfg = make_hf_config(v)
    assert cfg.rope_parameters["rope_type"] == ("llama3" if v["rope_scaling"] else "default")

    torch.manual_seed(v["seed"])
    model = LlamaForCausalLM(cfg)
    hf_inv32 = model.model.rotary_emb.inv_freq.detach().clone()  # built by transformers in float32
    model.double()  # note: also casts the inv_freq buffer, but forward() recasts it to float32
    model.train()
    assert model.config._attn_implementation == "eager"
    if v["tie_embeddings"]:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:
        assert model.lm_head.weight is not model.model.embed_tokens.weight
    gen = torch.Generator().manual_seed(v["seed"] + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, modeling_llama.LlamaRMSNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, dtype=torch.float64, generator=gen))

    names = [n for n, _ in model.named_parameters()]  # tied: lm_head.weight is deduplicated
    params = [p for _, p in model.named_parameters()]
    assert ("lm_head.weight" in names) != v["tie_embeddings"]
    for p in params:
        assert p.dtype == torch.float64

    # ---- RoPE: float64 inv_freq, checked against transformers' float32 one
    inv = inv_freq_f64(v)
    assert hf_inv32.dtype == torch.float32
    hf_inv = hf_inv32.double()
    assert rel_err(hf_inv, inv) < 1e-6, (hf_inv, inv)
    assert ((hf_inv - inv).abs() / inv).max().item() < 1e-6
    if v["rope_scaling"] is not None:
        plain = inv_freq_f64(v, scaled=False)
        changed = int((((inv - plain).abs() / plain) > 1e-9).sum())
        assert changed > 0, "llama3 scaling changed no frequencies"
        # and transformers really uses the scaled table (not the plain one)
        assert rel_err(hf_inv, plain) > 1e-3
        print(f"[{name}] llama3 rope: {changed}/{inv.numel()} frequencies changed by scaling")

    # ---- inputs
    ids = torch.randint(0, V, (B, T), generator=gen, dtype=torch.int64)
    targets = torch.full((B, T), IGNORE, dtype=torch.int64)
    targets[:, :-1] = ids[:, 1:]
    targets[1, 3] = IGNORE
    targets[0, 5] = IGNORE
    ids = ids.to(torch.int32)
    targets = targets.to(torch.int32)
    labels = hf_labels(targets)

    # ---- stock transformers pass (float32 internals) for cross-checking
    stock = copy.deepcopy(model)
    stock_cos, _ = stock.model.rotary_emb(torch.zeros(B, T, 1, dtype=torch.float64),
                                          torch.arange(T)[None].expand(B, T))
    stock_out = stock(input_ids=ids.long(), labels=labels)
    stock_loss = stock_out.loss
    assert stock_loss.dtype == torch.float32  # ForCausalLMLoss upcasts with .float()
    stock_loss.backward()
    stock_grads = {n: p.grad.detach().clone() for n, p in stock.named_parameters()}
    del stock

    # ---- golden float64 pass
    patch_model_f64(model, inv)
    cos, _ = model.model.rotary_emb(torch.zeros(B, T, 1, dtype=torch.float64),
                                    torch.arange(T)[None].expand(B, T))
    assert cos.shape == (B, T, v["head_dim"]) and cos.dtype == torch.float64
    assert (cos - stock_cos).abs().max().item() < 1e-5

    calls0 = _F64_ATTN_CALLS[0]
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids.long(), labels=labels)
    assert _F64_ATTN_CALLS[0] - calls0 == v["n_layers"], "float64 attention patch not used"
    logits = out.logits
    assert logits.dtype == torch.float64 and logits.shape == (B, T, V)
    loss = ce_loss_f64(logits, targets)

    # transformers' own loss (computed in float32 from our logits) must agree
    assert abs(out.loss.item() - loss.item()) < 1e-6 * max(1.0, abs(loss.item())), (out.loss, loss)
    # manual mean over non-ignored positions
    logp_all = torch.log_softmax(logits, dim=-1)
    mask = targets != IGNORE
    tgt = targets.clamp_min(0).long()
    logprobs = torch.where(mask, logp_all.gather(-1, tgt[..., None])[..., 0], 0.0)
    manual = -logprobs.sum() / mask.sum()
    assert abs(manual.item() - loss.item()) < 1e-13, (manual, loss)
    # stock (float32-internal) model is the same function up to float32 rounding
    assert rel_err(stock_out.logits, logits) < 1e-5
    assert abs(stock_loss.item() - loss.item()) < 1e-5

    # independent plain-torch reference
    W = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        ref = reference_logits(W, ids, v, inv)
    ref_err = (ref - logits).abs().max().item()
    assert ref_err < 1e-12, ref_err

    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    for n in names:
        assert rel_err(stock_grads[n], grads[n]) < 1e-4, (n, rel_err(stock_grads[n], grads[n]))
    grad_norm0 = total_norm(grads.values())

    tensors = {
        "input_ids": ids.contiguous(),
        "targets": targets.contiguous(),
        "logits": snap(logits),
        "loss": snap(loss).reshape(1),
        "logprobs": snap(logprobs),
    }
    for n, p in model.named_parameters():
        tensors["weight." + n] = snap(p)
        tensors["grad." + n] = snap(grads[n])

    # ---- AdamW with global grad-norm clipping
    clip = 0.5 * grad_norm0
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ADAMW["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
    )
    losses, norms = [], []
    for s in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=True)
        l = ce_loss_f64(model(input_ids=ids.long()).logits, targets)
        l.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, max_norm=clip)
        losses.append(l.item())
        norms.append(gn.item())
        opt.step()
    with torch.no_grad():
        losses.append(ce_loss_f64(model(input_ids=ids.long()).logits, targets).item())
    assert abs(losses[0] - loss.item()) < 1e-13
    assert abs(norms[0] - grad_norm0) < 1e-12 * grad_norm0
    assert norms[0] > clip  # clipping is active
    tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["adamw_grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    for n, p in model.named_parameters():
        tensors["weight_after." + n] = snap(p)

    meta_cfg = {
        "vocab_size": V,
        "dim": v["dim"],
        "n_layers": v["n_layers"],
        "n_heads": v["n_heads"],
        "n_kv_heads": v["n_kv_heads"],
        "head_dim": v["head_dim"],
        "ffn_dim": v["ffn_dim"],
        "norm_eps": v["norm_eps"],
        "rope_theta": v["rope_theta"],
        "tie_embeddings": v["tie_embeddings"],
        "max_seq_len": T,
        "rope_scaling": v["rope_scaling"],
    }
    meta_adamw = {
        "lr": ADAMW["lr"],
        "beta1": ADAMW["beta1"],
        "beta2": ADAMW["beta2"],
        "eps": ADAMW["eps"],
        "weight_decay": ADAMW["weight_decay"],
        "grad_clip": clip,
        "steps": ADAMW["steps"],
    }
    metadata = {
        "config": json.dumps(meta_cfg),
        "adamw": json.dumps(meta_adamw),
        "generator": (
            f"tools/golden/make_llama_golden.py ({name}, seed {v['seed']}): "
            f"transformers {transformers.__version__} LlamaForCausalLM, torch {torch.__version__}, "
            f"eager attention, float64 throughout (rope/rmsnorm/softmax/loss float32 casts replaced), "
            f"B={B} T={T}"
        ),
    }
    summary = dict(loss=loss.item(), grad_norm=grad_norm0, clip=clip, adamw_losses=losses,
                   adamw_grad_norms=norms, ref_err=ref_err,
                   stock_loss_diff=abs(stock_loss.item() - loss.item()))
    return tensors, metadata, summary


def canonicalize_header(path: str) -> None:
    """Make the file byte-reproducible.

    safetensors stores ``__metadata__`` in a hash map, so the order of the
    metadata keys in the JSON header changes from run to run.  Rewrite the
    header with the metadata keys sorted (same bytes otherwise, same length).
    """
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
        header = json.loads(raw, object_pairs_hook=dict)
        dump = lambda h: json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode()
        assert dump(header) == raw.rstrip(b" "), "unexpected safetensors header formatting"
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        header = {"__metadata__": header.pop("__metadata__"), **header}
        new = dump(header)
        assert len(new) == len(raw.rstrip(b" "))
        f.seek(8)
        f.write(new.ljust(n, b" "))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden", help="output directory (default: tests/golden)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name, v in VARIANTS.items():
        tensors, metadata, s = build_variant(name, v)
        path = os.path.join(args.out, name + ".safetensors")
        save_file(tensors, path, metadata=metadata)
        canonicalize_header(path)
        size = os.path.getsize(path)
        total += size
        print(f"[{name}] wrote {path} ({size} bytes, {len(tensors)} tensors)")
        print(f"[{name}] loss={s['loss']:.17g} grad_norm={s['grad_norm']:.17g} clip={s['clip']:.17g}")
        print(f"[{name}] adamw_losses=" + ", ".join(f"{x:.12f}" for x in s["adamw_losses"]))
        print(f"[{name}] adamw_grad_norms=" + ", ".join(f"{x:.12f}" for x in s["adamw_grad_norms"]))
        print(f"[{name}] |ref-hf| logits={s['ref_err']:.2e}  |stock f32 loss - f64 loss|={s['stock_loss_diff']:.2e}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
