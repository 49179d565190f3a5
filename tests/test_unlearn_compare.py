"""Tests of tools/bench/unlearn_compare.py, which tools/gpu_check.sh runs to set a CUDA
`lethe unlearn` run beside the CPU's bf16 emulation of it.

    python3 -m pytest tests/test_unlearn_compare.py

The runs are synthetic, with the fields the comparison reads, so every difference is known.
"""

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "bench", "unlearn_compare.py")


def write_run(path, forget_nll_after, step_loss):
    os.makedirs(path)
    split = lambda nll: {"nll": nll, "acc": 0.5, "ppl": math.exp(nll) if math.isfinite(nll) else nll, "tokens": 10}
    report = {
        "before": {"forget": split(1.0), "retain": split(2.0), "mia_auc_loss": 0.7},
        "after": {"forget": split(forget_nll_after), "retain": split(2.0), "mia_auc_loss": 0.6},
    }
    with open(os.path.join(path, "report.json"), "w") as f:
        json.dump(report, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"eval": report["before"], "step": 0}) + "\n")
        f.write(json.dumps({"step": 1, "loss": step_loss, "grad_norm": 1.0, "terms": {"nll@forget": 1.0}}) + "\n")


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


def test_differences_are_relative_to_the_larger_value(tmp_path):
    emu, dev = str(tmp_path / "emu"), str(tmp_path / "dev")
    write_run(emu, 1.5, 0.25)
    write_run(dev, 1.2, 0.25)
    out_json = str(tmp_path / "cmp.json")
    r = run(emu, dev, "--json", out_json)
    assert r.returncode == 0, r.stderr
    # after: forget nll 1.5 against 1.2 is 0.3 / 1.5 = 0.2; everything else is equal.
    line = next(l for l in r.stdout.splitlines() if "forget nll" in l and "1.2" in l)
    assert line.split()[-1] == "2.00e-01"
    assert r.stdout.splitlines()[-1] == "largest relative difference: before training 0.00e+00, after training 2.00e-01"
    with open(out_json) as f:
        groups = {g["group"]: g["max_rel_diff"] for g in json.load(f)["groups"]}
    assert groups["before training"] == 0.0 and groups["step 1"] == 0.0
    # (1.5 - 1.2) / 1.5 in doubles: 1.5 - 1.2 is exact to 2^-52 relative of 1.2, so a few ulps.
    assert abs(groups["after training"] - 0.2) < 1e-15


def test_a_non_finite_number_fails_and_is_named(tmp_path):
    emu, dev = str(tmp_path / "emu"), str(tmp_path / "dev")
    write_run(emu, 1.5, 0.25)
    write_run(dev, 1.5, float("nan"))
    r = run(emu, dev)
    assert r.returncode == 1
    assert "not finite: step 1 loss: emulation 0.25, cuda nan" in r.stderr


def test_a_run_without_a_report_fails_naming_the_file(tmp_path):
    emu = str(tmp_path / "emu")
    write_run(emu, 1.5, 0.25)
    r = run(emu, str(tmp_path / "missing"))
    assert r.returncode == 1
    assert "report.json" in r.stderr
