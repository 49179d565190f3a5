"""Tests of tools/results/make_results.py, which rewrites the generated tables of
docs/results.md from `make results` runs (tools/results/run_results.sh).

    python3 -m pytest tests/test_make_results.py

The reports are synthetic, with the fields the tables read, so each expected cell is known.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "results", "make_results.py")

DOC = """# Results

Hand-written text that must survive.

<!-- results:begin -->
old books tables
<!-- results:end -->

Between the sections.

<!-- results:entities:begin -->
old entity tables
<!-- results:entities:end -->

<!-- results:cross_domain:begin -->
old cross-domain table
<!-- results:cross_domain:end -->

Trailing text.
"""


def split(nll):
    return {"nll": nll}


def report(forget_after, steps=60, leak=-3.0, seed_auc=0.5, qa_after=0.3, retain_change=-5.0):
    before = {s: split(1.0) for s in ("forget", "holdout", "retain", "general")}
    after = {"forget": split(forget_after), "holdout": split(1.2), "retain": split(1.1), "general": split(0.9)}
    oracle = {"forget": split(1.3), "holdout": split(1.25), "retain": split(0.95), "general": split(0.98)}
    mia = {w: {"loss": {"auc": a, "auc_ci95": [a - 0.1, a + 0.1]}}
           for w, a in (("before", 0.8), ("after", seed_auc), ("oracle", 0.45))}
    pl = {"value": leak, "ci95": [leak - 20, leak + 20]}
    return {
        "recipe_file": "r.yaml", "steps_run": steps, "stop_reason": "max steps",
        "model_sha256": "a" * 64, "oracle_sha256": "b" * 64,
        "data": {"forget": {"documents": 27}, "holdout": {"documents": 27}},
        "selection_split": {"enabled": True, "forget": {"report_documents": 14},
                            "holdout": {"report_documents": 14}},
        "before": before, "after": after, "oracle": oracle, "mia": mia,
        "privleak": {"after": {"muse_min_k_40": pl, "relative_auc_loss": pl},
                     "before": {"muse_min_k_40": pl, "relative_auc_loss": pl}},
        "privleak_relative_auc_percent": {"loss": leak},
        "verdict": {"met": abs(leak) <= 5, "retain_nll_change_vs_original_percent": retain_change,
                    "general_nll_change_vs_original_percent": -1.0},
        "multiple_choice": {"before": {"acc": 0.95}, "after": {"acc": qa_after}, "oracle": {"acc": 0.25}},
        "verbatim_memorisation": {w: {"rouge_l_f1": 0.1} for w in ("before", "after", "oracle")},
    }


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def make_runs(root):
    write(os.path.join(root, "methods", "ga", "report.json"), report(1.5))
    write(os.path.join(root, "sweep", "ga-lr1e-4", "report.json"), report(2.0))
    for name in ("ga_gd", "npo_gd"):
        write(os.path.join(root, "entities", "recipes", name, "report.json"), report(1.4))
    # Three seeds whose spread is known: QA after 0.2, 0.3, 0.4 (mean 0.3, sd 0.1).
    for seed, qa in (("20261", 0.2), ("20262", 0.3), ("20263", 0.4)):
        write(os.path.join(root, "entities", "seeds", seed, "report.json"), report(1.6, steps=400, qa_after=qa))
    for name in ("rmu", "ga_gd"):
        write(os.path.join(root, "cross_domain", name, "report.json"), report(2.5, steps=30))


def run(runs, doc, *args):
    return subprocess.run([sys.executable, TOOL, str(runs), str(doc), *args], capture_output=True, text=True)


def test_every_section_is_rewritten_and_the_rest_kept(tmp_path):
    make_runs(tmp_path / "runs")
    doc = tmp_path / "results.md"
    doc.write_text(DOC)
    r = run(tmp_path / "runs", doc, "--seconds", "3599", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    text = doc.read_text()
    for kept in ("Hand-written text that must survive.", "Between the sections.", "Trailing text."):
        assert kept in text
    for old in ("old books tables", "old entity tables", "old cross-domain table"):
        assert old not in text
    assert "59 min 59 s for every run of `make results`, 2 at a time" in text
    # Books: the method's row with its retain change against the original (1.1 vs 1.0).
    assert "| ga | 60 (max steps) | 1.5000 | 1.2000 | 1.1000 (+10.0%) |" in text
    assert "| ga | 1e-4 | 2.0000 | +0.8000 | +10.0% |" in text
    # Entities: the default pair's seed run stands in the recipes table as wga_gd.yaml.
    assert "| ga_gd.yaml | 60 (max steps) |" in text and "| npo_gd.yaml |" in text
    assert "| wga_gd.yaml | 400 (max steps) | 0.950 / 0.200 / 0.250 |" in text
    assert "| seed 20263 | 400 (max steps) | 0.950 / 0.400 / 0.250 |" in text
    assert "| forget QA after | 0.300 | 0.100 | 0.200 .. 0.400 |" in text
    # Cross-domain: the oracle's change on books against the original (0.95 vs 1.0).
    assert "| **oracle (never saw code)** | - | 1.3000 | 1.2500 | 0.9500 (-5.0%) |" in text
    assert "| rmu.yaml | 30 (max steps) | 2.5000 |" in text


def test_a_section_not_run_keeps_its_tables(tmp_path):
    make_runs(tmp_path / "runs")
    doc = tmp_path / "results.md"
    doc.write_text(DOC)
    r = run(tmp_path / "runs", doc, "--sections", "entities")
    assert r.returncode == 0, r.stderr
    text = doc.read_text()
    assert "old books tables" in text and "old cross-domain table" in text
    assert "old entity tables" not in text


def test_missing_markers_or_runs_are_errors_and_leave_the_file(tmp_path):
    make_runs(tmp_path / "runs")
    doc = tmp_path / "results.md"
    doc.write_text(DOC.replace("<!-- results:cross_domain:end -->\n", ""))
    before = doc.read_text()
    r = run(tmp_path / "runs", doc)
    assert r.returncode != 0
    assert "results:cross_domain:begin" in r.stderr
    assert doc.read_text() == before
    doc.write_text(DOC)
    r = run(tmp_path / "empty", doc, "--sections", "entities")
    assert r.returncode != 0 and "entity runs are missing" in r.stderr
    assert doc.read_text() == DOC
    r = run(tmp_path / "runs", doc, "--sections", "books nonsense")
    assert r.returncode != 0 and "unknown section 'nonsense'" in r.stderr
    assert doc.read_text() == DOC
