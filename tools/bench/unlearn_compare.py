#!/usr/bin/env python3
"""Sets two `lethe unlearn` runs of one recipe side by side: the CUDA run and the CPU's bf16
emulation (tools/gpu_check.sh runs both on the GPU machine). Prints, for the evaluation
before training, each logged step and the evaluation after, every number of both runs and
their relative difference, and the largest difference of each group.

It is a measurement, not a test: the emulation rounds where the GPU rounds but sums in
another order, and training amplifies the difference step by step, so no tolerance is
derived for the trained model (the per-op and whole-model bounds are the GPU tests'). The
exit status is 1 only when a run left no report or a number that should be finite is not.

    unlearn_compare.py EMULATION_DIR CUDA_DIR [--json OUT] [--names A,B]

--names labels the two columns (default "emulation,cuda"): gpu_check.sh also sets a
two-rank run on the GPU beside the one-process one.
"""
import json
import math
import os
import sys


def load(run):
    with open(os.path.join(run, "report.json")) as f:
        report = json.load(f)
    steps = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                if "loss" in rec:
                    steps[rec["step"]] = rec
    return report, steps


def evaluation(ev):
    """The evaluation's numbers as (name, value): each split's NLL and accuracy, the MIA AUC."""
    out = []
    for split in sorted(k for k, v in ev.items() if isinstance(v, dict)):
        for key in ("nll", "acc"):
            if key in ev[split]:
                out.append((f"{split} {key}", ev[split][key]))
    if "mia_auc_loss" in ev:
        out.append(("MIA AUC (loss)", ev["mia_auc_loss"]))
    return out


def rel(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    json_out = argv[argv.index("--json") + 1] if "--json" in argv else None
    names = (argv[argv.index("--names") + 1] if "--names" in argv else "emulation,cuda").split(",")
    if len(names) != 2:
        print("unlearn_compare: --names takes two labels: A,B", file=sys.stderr)
        return 2
    try:
        (emu, emu_steps), (dev, dev_steps) = load(argv[1]), load(argv[2])
    except (OSError, ValueError) as e:
        print(f"unlearn_compare: {e}", file=sys.stderr)
        return 1
    groups = []
    groups.append(("before training", evaluation(emu.get("before", {})), evaluation(dev.get("before", {}))))
    for step in sorted(set(emu_steps) & set(dev_steps)):
        pick = lambda r: [("loss", r["loss"]), ("grad norm", r.get("grad_norm", float("nan")))] + sorted(
            (f"term {k}", v) for k, v in r.get("terms", {}).items())
        groups.append((f"step {step}", pick(emu_steps[step]), pick(dev_steps[step])))
    groups.append(("after training", evaluation(emu.get("after", {})), evaluation(dev.get("after", {}))))

    bad = []
    summary = []
    print(f"{'':28} {names[0]:>14} {names[1]:>14} {'rel. diff':>10}")
    for name, a, b in groups:
        worst = 0.0
        print(f"{name}:")
        for (key, x), (_, y) in zip(a, b):
            if not (math.isfinite(x) and math.isfinite(y)):
                bad.append(f"{name} {key}: {names[0]} {x}, {names[1]} {y}")
                print(f"  {key:26} {x:14.6g} {y:14.6g} {'NOT FINITE':>10}")
                continue
            d = rel(x, y)
            worst = max(worst, d)
            print(f"  {key:26} {x:14.6g} {y:14.6g} {d:10.2e}")
        summary.append({"group": name, "max_rel_diff": worst})
    steps_left = sorted(set(emu_steps) ^ set(dev_steps))
    if steps_left:
        print(f"steps logged by one run only: {steps_left}")
    print("largest relative difference: " + ", ".join(
        f"{s['group']} {s['max_rel_diff']:.2e}" for s in summary if s["group"] in ("before training", "after training")))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"groups": summary, "not_finite": bad}, f, indent=1)
    for b in bad:
        print(f"unlearn_compare: not finite: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
