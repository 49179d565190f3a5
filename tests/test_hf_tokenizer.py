"""tools/models/hf_tokenizer.py: the tokenizer.json built from a GGUF-converted checkpoint
encodes exactly as transformers' GGUF tokenizer did when the SmolLM2 golden fixtures were
made (tests/golden/smollm2: four prompts, and 1024 tokens of a public-domain book).

Skipped unless the SmolLM2 checkpoint exists (make smollm2) and `tokenizers` is installed.
"""

import json
import os
import struct
import subprocess
import sys

import pytest

np = pytest.importorskip("numpy")
h5py = pytest.importorskip("h5py")
tokenizers = pytest.importorskip("tokenizers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(REPO, "models", "smollm2-135m-instruct")
GOLDEN = os.path.join(REPO, "tests", "golden", "smollm2")
TOOL = os.path.join(REPO, "tools", "models", "hf_tokenizer.py")


def build(tmp_path, source):
    out = tmp_path / "tokenizer.json"
    r = subprocess.run([sys.executable, TOOL, str(source), "--out", str(out)], capture_output=True, text=True)
    return r, out


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    tensors = {}
    for name, t in header.items():
        if name == "__metadata__" or not name.startswith("ids."):
            continue
        assert t["dtype"] == "I32"
        a, b = t["data_offsets"]
        tensors[name] = np.frombuffer(blob[8 + n + a : 8 + n + b], dtype="<i4")
    return header["__metadata__"], tensors


@pytest.mark.skipif(not os.path.exists(os.path.join(CKPT, "tokenizer.json")), reason="no SmolLM2 checkpoint (make smollm2)")
def test_matches_transformers_gguf_tokenizer(tmp_path):
    r, out = build(tmp_path, CKPT)
    assert r.returncode == 0, r.stderr
    tok = tokenizers.Tokenizer.from_file(str(out))
    meta, ids = read_safetensors(os.path.join(GOLDEN, "prompts.safetensors"))
    prompts = json.loads(meta["prompts"])
    assert len(prompts) == 4
    for i, p in enumerate(prompts):
        assert tok.encode(p, add_special_tokens=False).ids == ids[f"ids.{i}"].tolist(), p
    with open(os.path.join(REPO, "data", "corpora", "books", "holdout.jsonl"), encoding="utf-8") as f:
        text = json.loads(f.readline())["text"]
    with h5py.File(os.path.join(GOLDEN, "prose.h5"), "r") as f:
        ref = f["tokens"][:]
    got = tok.encode(text, add_special_tokens=False).ids[: len(ref)]
    assert len(ref) == 1024
    assert got == ref.tolist()
    # Digits are split one by one (the "smollm" pre-tokenizer), and decoding inverts encoding.
    assert tok.encode("2024", add_special_tokens=False).tokens == ["2", "0", "2", "4"]
    assert tok.decode(tok.encode(text[:500], add_special_tokens=False).ids) == text[:500]


def test_refuses_what_it_cannot_encode_exactly(tmp_path):
    base = {"format": "lethe-tokenizer", "model": "gpt2", "pre": "smollm", "tokens": ["a", "b", "ab"],
            "merges": ["a b"], "token_types": [1, 1, 1], "bos_id": -1, "eos_id": -1}
    cases = [({"model": "llama"}, "not supported"), ({"pre": "qwen2"}, "pre-tokenizer 'qwen2' is not supported"),
             ({"merges": []}, "no BPE merges"), ({"merges": ["ab"]}, "merge 0"), ({"format": "other"}, "not a lethe-tokenizer")]
    for change, needle in cases:
        src = tmp_path / "lt.json"
        src.write_text(json.dumps({**base, **change}))
        r, out = build(tmp_path, src)
        assert r.returncode != 0 and needle in r.stderr, (change, r.stderr)
        assert not out.exists()
    r, _ = build(tmp_path, tmp_path / "missing.json")
    assert r.returncode != 0 and "missing.json" in r.stderr
