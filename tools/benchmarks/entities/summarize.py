#!/usr/bin/env python3
"""Prints one markdown table row per entity-benchmark run from its report.json (instant).

    tools/benchmarks/entities/summarize.py runs/entities/ga_gd/report.json [...]

Columns: steps and stop reason, forget QA accuracy before / after / oracle (the recipe's
eval.mc_task), forget and holdout NLL after (oracle), retain and general NLL change against
the original model, MIA AUC of the LOSS attack after (oracle), and PrivLeak after in both
conventions with their 95% bootstrap intervals, TOFU's forget quality of the forget QA
before / after (the KS test's p-value of the per-question truth ratios against the
oracle's; n/a in reports written before it was measured), the mean exposure in bits of the
forget people's canaries before / after / oracle and of the retain people's after
(eval.canaries forget / retain), and the retain and holdout QA
after when the recipe scored them (eval.mc_tasks retain_qa / holdout_qa; otherwise
score_qa.sh).

With --spread (runs of one recipe over several seeds of the model/oracle pair, seeds.sh),
a second table follows: the mean, sample standard deviation and range over the runs of
each headline number, so a difference between recipes can be set against the spread
between seeds.

With --by-field QA.jsonl (the recipe's eval.mc_task file, e.g.
data/benchmarks/entities/qa/forget_qa.jsonl), a table per run follows: for each fact
field, the share of questions whose truth ratio is below 1 (the model prefers the true
answer to its distractors) before, after and for the oracle: which facts survive.
"""
import json
import sys


def pct(x):
    return "n/a" if x is None else f"{x:+.1f}%"


def leak(j, who, conv):
    x = j.get("privleak", {}).get(who, {}).get(conv)
    if not x or x["value"] is None:
        return "n/a"
    lo, hi = x["ci95"]
    return f"{x['value']:+.1f}% [{lo:+.0f}, {hi:+.0f}]" if lo is not None else f"{x['value']:+.1f}%"


def task_acc(j, name):
    x = j.get("multiple_choice_tasks", {}).get(name, {}).get("after")
    return "n/a" if x is None else f"{x['acc']:.3f}"


def forget_quality(j, who):
    x = j.get("multiple_choice", {}).get(who, {}).get("forget_quality")
    return None if x is None else x["p_value"]


def fq(p):
    return "n/a" if p is None else (f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}")


def exposure(j, name, who):
    x = j.get("canary_exposure", {}).get(name, {}).get(who)
    return None if x is None else x["mean_bits"]


def bits(x):
    return "n/a" if x is None else f"{x:.1f}"


def headline(j):
    """The numbers the spread table summarises; None where a report lacks one."""
    mc = j.get("multiple_choice", {})
    v = j.get("verdict", {})
    mia = j.get("mia", {})
    leak_muse = j.get("privleak", {}).get("after", {}).get("muse_min_k_40", {}) or {}
    tasks = j.get("multiple_choice_tasks", {})
    return {
        "steps run": j.get("steps_run"),
        "forget QA after": mc.get("after", {}).get("acc"),
        "forget QA oracle": mc.get("oracle", {}).get("acc"),
        "retain NLL vs original (%)": v.get("retain_nll_change_vs_original_percent"),
        "general NLL vs original (%)": v.get("general_nll_change_vs_original_percent"),
        "MIA AUC loss after": mia.get("after", {}).get("loss", {}).get("auc"),
        "MIA AUC loss oracle": mia.get("oracle", {}).get("loss", {}).get("auc"),
        "PrivLeak MUSE after (%)": leak_muse.get("value"),
        "forget quality after (KS p)": forget_quality(j, "after"),
        "forget canary exposure after (bits)": exposure(j, "forget", "after"),
        "forget canary exposure oracle (bits)": exposure(j, "forget", "oracle"),
        "retain canary exposure after (bits)": exposure(j, "retain", "after"),
        "retain QA after": tasks.get("retain_qa", {}).get("after", {}).get("acc"),
        "holdout QA after": tasks.get("holdout_qa", {}).get("after", {}).get("acc"),
    }


def by_field(j, qa_path):
    fields = [json.loads(line).get("field", "?") for line in open(qa_path) if line.strip()]
    mc = j.get("multiple_choice", {})
    per = {w: mc.get(w, {}).get("truth_ratio", {}).get("per_item") for w in ("before", "after", "oracle")}
    if per["after"] is None or len(per["after"]) != len(fields):
        print(f"\n{j['recipe_file']}: no per-question truth ratios for {qa_path}")
        return
    print()
    print(f"Share of questions with truth ratio < 1 (prefers the true answer), by field: {j['recipe_file']}")
    print()
    print("| field | questions | before | after | oracle |")
    print("|---|---:|---:|---:|---:|")
    for f in dict.fromkeys(fields):
        idx = [i for i, x in enumerate(fields) if x == f]
        cells = []
        for w in ("before", "after", "oracle"):
            r = per[w]
            cells.append("n/a" if r is None else f"{sum(r[i] < 1 for i in idx) / len(idx):.2f}")
        print(f"| {f} | {len(idx)} | " + " | ".join(cells) + " |")


def spread(reports):
    """The spread table over runs of one recipe, as markdown."""
    rows = [headline(j) for j in reports]
    out = [f"Over {len(rows)} runs (mean, sample standard deviation, min .. max):", "",
           "| number | mean | sd | range |", "|---|---:|---:|---|"]
    for key in rows[0]:
        xs = [r[key] for r in rows if r[key] is not None]
        if not xs:
            out.append(f"| {key} | n/a | n/a | n/a |")
            continue
        m = sum(xs) / len(xs)
        sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else float("nan")
        out.append(f"| {key} | {m:.3f} | {sd:.3f} | {min(xs):.3f} .. {max(xs):.3f} |")
    return "\n".join(out)


def rows(reports, labels=None):
    """One markdown row per run; labels name the runs (default: each report's recipe file)."""
    out = ["| run | steps (stop) | forget QA before / after / oracle | forget NLL after (oracle) "
           "| holdout NLL after (oracle) | retain NLL vs original | general NLL vs original "
           "| MIA AUC loss after (oracle) | PrivLeak MUSE after | PrivLeak rel. AUC after "
           "| forget quality before / after | forget canary bits before / after / oracle | retain canary bits after "
           "| retain QA after | holdout QA after |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, j in enumerate(reports):
        mc = j.get("multiple_choice", {})
        qa = " / ".join(f"{mc[w]['acc']:.3f}" if w in mc else "n/a" for w in ("before", "after", "oracle"))
        b, a, o = j["before"], j["after"], j.get("oracle", {})
        nll = lambda d, s: f"{d[s]['nll']:.4f}" if s in d else "n/a"
        v = j.get("verdict", {})
        auc_a = j.get("mia", {}).get("after", {}).get("loss", {}).get("auc")
        auc_o = j.get("mia", {}).get("oracle", {}).get("loss", {}).get("auc")
        auc = f"{auc_a:.3f} ({auc_o:.3f})" if auc_a is not None and auc_o is not None else "n/a"
        label = labels[k] if labels else j["recipe_file"]
        out.append(f"| {label} | {j['steps_run']} ({j['stop_reason']}) | {qa} "
                   f"| {nll(a, 'forget')} ({nll(o, 'forget')}) | {nll(a, 'holdout')} ({nll(o, 'holdout')}) "
                   f"| {pct(v.get('retain_nll_change_vs_original_percent'))} "
                   f"| {pct(v.get('general_nll_change_vs_original_percent'))} | {auc} "
                   f"| {leak(j, 'after', 'muse_min_k_40')} | {leak(j, 'after', 'relative_auc_loss')} "
                   f"| {fq(forget_quality(j, 'before'))} / {fq(forget_quality(j, 'after'))} "
                   f"| {' / '.join(bits(exposure(j, 'forget', w)) for w in ('before', 'after', 'oracle'))} "
                   f"| {bits(exposure(j, 'retain', 'after'))} "
                   f"| {task_acc(j, 'retain_qa')} | {task_acc(j, 'holdout_qa')} |")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    with_spread = "--spread" in args
    args = [a for a in args if a != "--spread"]
    field_qa = None
    if "--by-field" in args:
        k = args.index("--by-field")
        field_qa = args[k + 1]
        del args[k:k + 2]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    reports = [json.load(open(p)) for p in args]
    print(rows(reports))
    if with_spread:
        print()
        print(spread(reports))
    if field_qa:
        for p in args:
            by_field(json.load(open(p)), field_qa)
