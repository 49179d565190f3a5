#!/usr/bin/env python3
"""Generate the GGUF fixtures for tests/test_gguf.cpp.

Usage (from the repository root):
    pip install gguf numpy safetensors torch transformers
    python3 tools/golden/make_gguf_fixtures.py --out tests/golden/gguf

Everything is written with llama.cpp's own gguf-py (GGUFWriter, gguf.quants), so the
C++ reader is checked against the reference implementation, not against itself:

* ``llama_tiny.gguf``: a tiny Llama (vocab 32, dim 32, 2 layers, 4 heads / 2 KV heads,
  ffn 24, untied, linear RoPE scaling) in F32, with a tokenizer and one metadata key of
  every GGUF value type under ``test.*``. q_proj / k_proj are stored the way llama.cpp's
  convert_hf_to_gguf.py stores them (``LlamaModel.permute``); ``llama_tiny_expected.safetensors``
  holds the same weights under transformers' names in transformers' layout.
* ``llama_tied_q8.gguf``: a tied Llama (no ``output.weight``; vocab 32, dim 32, 1 layer,
  4 heads / 1 KV head, ffn 64) with Q8_0 matrices, F32 norms and Llama-3 RoPE scaling
  stored as ``rope_freqs.weight`` (computed as the converter computes it);
  ``llama_tied_q8_expected.safetensors`` holds gguf-py's dequantisation, un-permuted.
* ``quant_{f16,bf16,q8_0,q4_0,q4_1}.gguf``: one small tensor ``w`` [4, 256] per ggml type
  (``quant_q8_0.gguf`` also has a 3-D ``w3`` [2, 3, 32]; ``quant_q4_1.gguf`` uses 64-byte
  alignment), and ``quant_expected.safetensors`` with gguf-py's ``dequantize`` of each.

The un-permutation expected by the test is checked here against transformers' GGUF loader
(``LlamaTensorProcessor._reverse_permute_weights``) and, when it loads, against
``transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint`` end to end.
Seeds are fixed; the output is byte-for-byte reproducible for a given gguf-py version.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from safetensors.numpy import save_file

TINY = dict(vocab=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn=24, ctx=64, theta=500000.0,
            eps=1e-5, linear_factor=2.0)
TIED = dict(vocab=32, dim=32, n_layers=1, n_heads=4, n_kv_heads=1, ffn=64, ctx=256, theta=500000.0, eps=1e-6,
            llama3=dict(factor=8.0, low=1.0, high=4.0, orig=8192))


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py, LlamaModel.permute (HF rotate_half -> interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def reverse_permute_transformers(w: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """transformers' inverse, used when it loads a GGUF file (the reference for lethe)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    return LlamaTensorProcessor()._reverse_permute_weights(w, n_head, n_kv)


def hf_weights(cfg: dict, rng: np.random.Generator, tied: bool) -> dict[str, np.ndarray]:
    d, hd = cfg["dim"], cfg["dim"] // cfg["n_heads"]
    w = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab"], d))}
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
        w[p + "self_attn.q_proj.weight"] = rng.standard_normal((cfg["n_heads"] * hd, d))
        w[p + "self_attn.k_proj.weight"] = rng.standard_normal((cfg["n_kv_heads"] * hd, d))
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((cfg["n_kv_heads"] * hd, d))
        w[p + "self_attn.o_proj.weight"] = rng.standard_normal((d, cfg["n_heads"] * hd))
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
        w[p + "mlp.gate_proj.weight"] = rng.standard_normal((cfg["ffn"], d))
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((cfg["ffn"], d))
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((d, cfg["ffn"]))
    w["model.norm.weight"] = 1 + 0.1 * rng.standard_normal(d)
    if not tied:
        w["lm_head.weight"] = rng.standard_normal((cfg["vocab"], d))
    return {k: (0.05 * v if v.ndim == 2 else v).astype(np.float32) for k, v in w.items()}


LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


def to_gguf_layout(hf: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    if hf.endswith("q_proj.weight"):
        return permute(w, cfg["n_heads"], cfg["n_heads"])
    if hf.endswith("k_proj.weight"):
        return permute(w, cfg["n_heads"], cfg["n_kv_heads"])
    return w


def add_llama_metadata(wr: gguf.GGUFWriter, cfg: dict, name: str) -> None:
    wr.add_name(name)
    wr.add_vocab_size(cfg["vocab"])
    wr.add_context_length(cfg["ctx"])
    wr.add_embedding_length(cfg["dim"])
    wr.add_block_count(cfg["n_layers"])
    wr.add_feed_forward_length(cfg["ffn"])
    wr.add_head_count(cfg["n_heads"])
    wr.add_head_count_kv(cfg["n_kv_heads"])
    wr.add_layer_norm_rms_eps(cfg["eps"])
    wr.add_rope_freq_base(cfg["theta"])
    wr.add_rope_dimension_count(cfg["dim"] // cfg["n_heads"])


def add_tokenizer(wr: gguf.GGUFWriter, vocab: int) -> None:
    tokens = ["<unk>", "<s>", "</s>", "<pad>"] + [chr(ord("a") + i) for i in range(26)] + ["ab", "abc"]
    assert len(tokens) == vocab
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_scores([-0.5 * i for i in range(vocab)])
    wr.add_token_types([2, 3, 3, 3] + [1] * (vocab - 4))
    wr.add_token_merges(["a b", "ab c"])
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    wr.add_pad_token_id(3)


def add_typed_metadata(wr: gguf.GGUFWriter) -> None:
    V = gguf.GGUFValueType
    wr.add_uint8("test.u8", 200)
    wr.add_int8("test.i8", -100)
    wr.add_uint16("test.u16", 60000)
    wr.add_int16("test.i16", -30000)
    wr.add_uint32("test.u32", 4000000000)
    wr.add_int32("test.i32", -2000000000)
    wr.add_float32("test.f32", 0.25)
    wr.add_bool("test.bool", True)
    wr.add_string("test.string", "h\u00e9llo")
    wr.add_uint64("test.u64", 2**40 + 3)
    wr.add_uint64("test.u64_big", 2**63 + 5)  # does not fit int64
    wr.add_int64("test.i64", -(2**40))
    wr.add_float64("test.f64", 0.1)
    wr.add_key_value("test.arr_i32", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    wr.add_key_value("test.arr_u8", [0, 255], V.ARRAY, sub_type=V.UINT8)
    wr.add_key_value("test.arr_f32", [0.5, -1.5], V.ARRAY, sub_type=V.FLOAT32)
    wr.add_key_value("test.arr_f64", [0.1, 2.0], V.ARRAY, sub_type=V.FLOAT64)
    wr.add_key_value("test.arr_str", ["x", "", "yz"], V.ARRAY, sub_type=V.STRING)
    wr.add_key_value("test.arr_bool", [True, False], V.ARRAY, sub_type=V.BOOL)
    wr.add_key_value("test.arr_nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)


def write(wr: gguf.GGUFWriter) -> None:
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def check_unpermute(expected: dict[str, np.ndarray], stored: dict[str, np.ndarray], cfg: dict) -> None:
    """transformers' inverse of llama.cpp's permutation must give back the HF layout."""
    for hf, w in expected.items():
        if hf.endswith("q_proj.weight") or hf.endswith("k_proj.weight"):
            got = reverse_permute_transformers(stored[gguf_name(hf)], cfg["n_heads"], cfg["n_heads"]
                                               if "q_proj" in hf else cfg["n_kv_heads"])
            assert np.array_equal(got, w), hf
            assert not np.array_equal(stored[gguf_name(hf)], w), f"{hf}: the permutation must move rows"


def check_with_transformers(path: str, expected: dict[str, np.ndarray]) -> None:
    """Load the file with transformers' GGUF loader; it must give the expected HF weights."""
    try:
        import torch  # noqa: F401
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
        meta = load_gguf_checkpoint(path, return_tensors=False)
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in meta["config"].items() if k != "model_type"}))
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    except Exception as e:  # optional cross-check: report, do not fail the generation
        print(f"  (transformers cross-check of {os.path.basename(path)} skipped: {type(e).__name__}: {e})")
        return
    for hf, w in expected.items():
        assert hf in tensors, f"transformers did not load {hf}"
        assert np.array_equal(tensors[hf].float().numpy(), w), f"transformers disagrees on {hf}"
    print(f"  transformers' GGUF loader reproduces all {len(expected)} weights of {os.path.basename(path)}")


def write_tiny(path: str, hf: dict[str, np.ndarray], typed_metadata: bool) -> dict[str, np.ndarray]:
    cfg = TINY
    wr = gguf.GGUFWriter(path, "llama")
    add_llama_metadata(wr, cfg, "tiny-llama")
    wr.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    wr.add_rope_scaling_factor(cfg["linear_factor"])
    add_tokenizer(wr, cfg["vocab"])
    if typed_metadata:
        add_typed_metadata(wr)
    stored = {}
    for name, w in hf.items():
        stored[gguf_name(name)] = to_gguf_layout(name, w, cfg)
        wr.add_tensor(gguf_name(name), stored[gguf_name(name)])
    write(wr)
    return stored


def make_tiny(out: str) -> None:
    hf = hf_weights(TINY, np.random.default_rng(1), tied=False)
    path = os.path.join(out, "llama_tiny.gguf")
    stored = write_tiny(path, hf, typed_metadata=True)
    check_unpermute(hf, stored, TINY)
    reader = gguf.GGUFReader(path)  # gguf-py's own reader must accept every test.* value
    assert reader.fields["test.arr_nested"].types[:2] == [gguf.GGUFValueType.ARRAY] * 2
    save_file(hf, os.path.join(out, "llama_tiny_expected.safetensors"))
    # transformers' loader cannot parse nested arrays, so it reads a copy without test.*.
    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "llama_tiny_plain.gguf")
        write_tiny(plain, hf, typed_metadata=False)
        check_with_transformers(plain, hf)


def llama3_rope_factors(hd: int, theta: float, s: dict) -> np.ndarray:
    """convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors (rope_type llama3)."""
    import torch
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    low_wavelen, high_wavelen = s["orig"] / s["low"], s["orig"] / s["high"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(s["factor"])
        else:
            smooth = (s["orig"] / wavelen - s["low"]) / (s["high"] - s["low"])
            factors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def make_tied_q8(out: str) -> None:
    cfg = TIED
    hf = hf_weights(cfg, np.random.default_rng(2), tied=True)
    hd = cfg["dim"] // cfg["n_heads"]
    path = os.path.join(out, "llama_tied_q8.gguf")
    wr = gguf.GGUFWriter(path, "llama")
    add_llama_metadata(wr, cfg, "tiny-llama-tied-q8")
    add_tokenizer(wr, cfg["vocab"])
    factors = llama3_rope_factors(hd, cfg["theta"], cfg["llama3"])
    # The fixture must exercise all three bands: unscaled, blended and fully scaled.
    assert factors[0] == 1 and 1 < factors[-2] < cfg["llama3"]["factor"] and factors[-1] == cfg["llama3"]["factor"]
    wr.add_tensor("rope_freqs.weight", factors)
    expected, stored = {}, {}
    for name, w in hf.items():
        g = to_gguf_layout(name, w, cfg)
        if w.ndim == 2:
            q = gguf.quants.quantize(g, QT.Q8_0)
            wr.add_tensor(gguf_name(name), q, raw_dtype=QT.Q8_0)
            stored[gguf_name(name)] = gguf.quants.dequantize(q, QT.Q8_0)
        else:
            wr.add_tensor(gguf_name(name), g)
            stored[gguf_name(name)] = g
    write(wr)
    for name in hf:
        s = stored[gguf_name(name)]
        if name.endswith("q_proj.weight"):
            s = reverse_permute_transformers(s, cfg["n_heads"], cfg["n_heads"])
        elif name.endswith("k_proj.weight"):
            s = reverse_permute_transformers(s, cfg["n_heads"], cfg["n_kv_heads"])
        expected[name] = np.ascontiguousarray(s, dtype=np.float32)
    expected["rope_freqs"] = factors
    save_file(expected, os.path.join(out, "llama_tied_q8_expected.safetensors"))
    check_with_transformers(path, {k: v for k, v in expected.items() if k != "rope_freqs"})


def special_values(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(n).astype(np.float32)
    x[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 6.0e-8, -3.0e-6, 65504.0]  # f16: subnormals and max
    return x


def make_quants(out: str) -> None:
    rng = np.random.default_rng(3)
    expected = {}
    for qt, fname in [(QT.F16, "f16"), (QT.BF16, "bf16"), (QT.Q8_0, "q8_0"), (QT.Q4_0, "q4_0"), (QT.Q4_1, "q4_1")]:
        wr = gguf.GGUFWriter(os.path.join(out, f"quant_{fname}.gguf"), "test")
        if qt == QT.Q4_1:
            wr.add_custom_alignment(64)
        tensors = {"w": (4, 256)}
        if qt == QT.Q8_0:
            tensors["w3"] = (2, 3, 32)
        for tname, shape in tensors.items():
            x = rng.standard_normal(shape).astype(np.float32) * np.float32(2.0)
            if qt in (QT.F16, QT.BF16):
                x = special_values(x.size, rng).reshape(shape)
            q = gguf.quants.quantize(x, qt)
            if qt == QT.F16:
                wr.add_tensor(tname, q)  # a float16 array: gguf-py picks F16 itself
            else:
                wr.add_tensor(tname, q, raw_dtype=qt)
            deq = gguf.quants.dequantize(q, qt)
            assert deq.shape == shape and deq.dtype == np.float32, (fname, deq.shape)
            expected[f"{fname}.{tname}"] = np.ascontiguousarray(deq)
        write(wr)
    save_file(expected, os.path.join(out, "quant_expected.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/gguf")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    make_tiny(args.out)
    make_tied_q8(args.out)
    make_quants(args.out)
    total = 0
    for f in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, f))
        total += size
        print(f"  {f}: {size} bytes")
    print(f"  total {total} bytes")


if __name__ == "__main__":
    main()
