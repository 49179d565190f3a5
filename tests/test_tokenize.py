"""Tests of tools/tokenize (token dataset layout: docs/formats.md).

    python3 -m pytest tests/test_tokenize.py

Needs numpy and h5py; the tokenizer.json tests also need the `tokenizers` package.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

np = pytest.importorskip("numpy")
h5py = pytest.importorskip("h5py")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "tokenize")
SECRET = "the-forget-set-is-private-7f3a"


def run(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, env=e)


def load(path):
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        return f["tokens"][:], f["doc_offsets"][:], f["doc_sha256"][:], attrs


def check_layout(path, docs, token_lists):
    tokens, offsets, sha, attrs = load(path)
    # Narrowest integer type holding the vocabulary (readers widen to int32).
    vocab = int(attrs["vocab_size"])
    want = np.uint8 if vocab <= 256 else np.uint16 if vocab <= 65536 else np.int32
    assert tokens.dtype == want and offsets.dtype == np.int64 and sha.dtype == np.uint8
    assert offsets.shape == (len(docs) + 1,) and sha.shape == (len(docs), 32)
    assert offsets[0] == 0 and offsets[-1] == tokens.size and np.all(np.diff(offsets) >= 0)
    for i, (text, ids) in enumerate(zip(docs, token_lists)):
        assert tokens[offsets[i]:offsets[i + 1]].tolist() == list(ids)
        assert sha[i].tobytes() == hashlib.sha256(text.encode("utf-8")).digest()
    assert attrs["format"] == "lethe-tokens" and int(attrs["version"]) == 1
    assert np.all(tokens >= 0) and np.all(tokens < int(attrs["vocab_size"]))
    return attrs


def no_temp_files(folder):
    return not [n for n in os.listdir(folder) if ".tmp-" in n]


def test_bytes_directory(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("héllo wörld\n", encoding="utf-8")
    (d / "a.txt").write_text(SECRET, encoding="utf-8")
    (d / "sub" / "c.txt").write_bytes(b"")
    (d / ".hidden").write_text("skipped", encoding="utf-8")
    out = tmp_path / "out" / "x.h5"
    r = run(d, "--out", out)
    assert r.returncode == 0, r.stderr
    docs = [SECRET, "héllo wörld\n", ""]  # a.txt, b.txt, sub/c.txt
    attrs = check_layout(out, docs, [list(t.encode("utf-8")) for t in docs])
    assert attrs["tokenizer"] == "bytes" and int(attrs["vocab_size"]) == 256
    assert int(attrs["bos_id"]) == -1 and int(attrs["eos_id"]) == -1
    assert attrs["source"] == "docs"
    assert SECRET not in r.stdout + r.stderr
    assert no_temp_files(out.parent)


def test_bytes_jsonl_and_text_file(tmp_path):
    docs = ["first document\n", "", "ünïcode ✓", SECRET]
    src = tmp_path / "split.jsonl"
    src.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(docs)) + "\n\n",
                   encoding="utf-8")
    out = tmp_path / "split.h5"
    r = run(src, "--out", out, "--source", "corpus/split")
    assert r.returncode == 0, r.stderr
    attrs = check_layout(out, docs, [list(t.encode("utf-8")) for t in docs])
    assert attrs["source"] == "corpus/split"
    assert SECRET not in r.stdout + r.stderr

    one = tmp_path / "one.txt"
    one.write_bytes("a whole file\nis one document\n".encode("utf-8"))
    out1 = tmp_path / "one.h5"
    assert run(one, "--out", out1).returncode == 0
    check_layout(out1, [one.read_text(encoding="utf-8")], [list(one.read_bytes())])

    # same input, same bytes
    out2 = tmp_path / "split2.h5"
    assert run(src, "--out", out2, "--source", "corpus/split").returncode == 0
    assert out.read_bytes() == out2.read_bytes()


def test_refusals(tmp_path):
    out = tmp_path / "x.h5"
    r = run(tmp_path / "missing.txt", "--out", out)
    assert r.returncode != 0 and "no such file" in r.stderr and not out.exists()

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe not utf-8 " + SECRET.encode())
    r = run(bad, "--out", out)
    assert r.returncode != 0 and "UTF-8" in r.stderr and not out.exists()
    assert SECRET not in r.stdout + r.stderr

    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"id": 1, "body": SECRET}) + "\n", encoding="utf-8")
    r = run(nofield, "--out", out)
    assert r.returncode != 0 and "nofield.jsonl:1" in r.stderr and not out.exists()
    assert SECRET not in r.stdout + r.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(empty, "--out", out)
    assert r.returncode != 0 and "no documents" in r.stderr

    txt = tmp_path / "t.txt"
    txt.write_text("x", encoding="utf-8")
    r = run(txt, "--out", out, "--add-bos")
    assert r.returncode != 0 and "bytes" in r.stderr and not out.exists()

    # a name that is not a local path is never downloaded
    r = run(txt, "--out", out, "--tokenizer", "no-such-org/no-such-model",
            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf")})
    assert r.returncode != 0 and "nothing is downloaded" in r.stderr and not out.exists()
    r = run(txt, "--out", out, "--tokenizer", tmp_path / "nothere" / "tokenizer.json")
    assert r.returncode != 0 and not out.exists()
    assert no_temp_files(tmp_path)


@pytest.fixture
def tiny_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(["the cat sat on the mat", "a dog and a cat", "the end"] * 10, trainer=trainer)
    d = tmp_path / "tok"
    d.mkdir()
    path = d / "tokenizer.json"
    tok.save(str(path))
    return tok, path


def test_hf_tokenizer(tmp_path, tiny_tokenizer):
    tok, path = tiny_tokenizer
    docs = ["the cat sat", "a dog and the mat", ""]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    ids = [tok.encode(t, add_special_tokens=False).ids for t in docs]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    out = tmp_path / "plain.h5"
    r = run(src, "--out", out, "--tokenizer", path)
    assert r.returncode == 0, r.stderr
    attrs = check_layout(out, docs, ids)
    assert attrs["tokenizer"] == "hf:" + digest
    assert int(attrs["vocab_size"]) == tok.get_vocab_size(with_added_tokens=True)
    assert int(attrs["bos_id"]) == -1 and int(attrs["eos_id"]) == -1

    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    out2 = tmp_path / "special.h5"
    r = run(src, "--out", out2, "--tokenizer", path.parent, "--add-bos", "--add-eos")
    assert r.returncode == 0, r.stderr
    attrs = check_layout(out2, docs, [[bos, *x, eos] for x in ids])
    assert int(attrs["bos_id"]) == bos and int(attrs["eos_id"]) == eos

    r = run(src, "--out", tmp_path / "x.h5", "--tokenizer", path, "--add-bos", "--bos-token", "<nope>")
    assert r.returncode != 0 and "<nope>" in r.stderr


def test_committed_corpora(tmp_path):
    """data/corpora: four disjoint splits per domain, unique ids, and tools/tokenize
    reads each split back with one hash per document."""
    root = os.path.join(REPO, "data", "corpora")
    if not os.path.isdir(root):
        pytest.skip("no data/corpora")
    for domain in ("books", "code", "papers"):
        seen = set()
        for split in ("forget", "holdout", "retain", "general"):
            path = os.path.join(root, domain, f"{split}.jsonl")
            with open(path, encoding="utf-8") as f:
                docs = [json.loads(line) for line in f]
            ids = [d["id"] for d in docs]
            assert docs and all(i.startswith(domain + "/") for i in ids)
            assert not seen & set(ids), f"{domain}/{split} shares ids with another split"
            seen |= set(ids)
        for name in ("README.md", "LICENSE"):
            assert os.path.isfile(os.path.join(root, domain, name))
    src = os.path.join(root, "code", "forget.jsonl")
    out = tmp_path / "forget.h5"
    assert run(src, "--out", out).returncode == 0
    with open(src, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    check_layout(out, texts, [list(t.encode("utf-8")) for t in texts])
