#!/usr/bin/env python3
"""Rewrites the generated parts of docs/results.md from the report.json files of
`make results` (tools/results/run_results.sh): one block per section (books, entities,
cross_domain), each between its own markers. Text outside the markers is kept, and a
section that was not run keeps its block."""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "entities"))
import summarize  # noqa: E402  (the entity benchmark's row and spread tables)

MARKERS = {"books": ("<!-- results:begin -->", "<!-- results:end -->"),
           "entities": ("<!-- results:entities:begin -->", "<!-- results:entities:end -->"),
           "cross_domain": ("<!-- results:cross_domain:begin -->", "<!-- results:cross_domain:end -->")}
ENTITY_RECIPES = ["ga_gd", "npo_gd", "wga_gd"]
SPLITS = ["forget", "holdout", "retain", "general"]


def load(path):
    with open(path) as f:
        return json.load(f)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def f4(x):
    return "" if x is None else f"{x:.4f}"


def pct(x):
    return "" if x is None else f"{x:+.1f}%"


def rel(after, before):
    return (after - before) / before * 100.0


def ci(v, lo, hi, fmt):
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def auc_cell(r, who):
    m = r.get("mia", {}).get(who, {}).get("loss")
    if not m:
        return ""
    lo, hi = m["auc_ci95"]
    return f"{m['auc']:.3f} [{lo:.2f}, {hi:.2f}]"


def leak_cell(r, who, key):
    x = r.get("privleak", {}).get(who, {}).get(key)
    if not x:
        return ""
    lo, hi = x["ci95"]
    return f"{x['value']:+.1f}% [{lo:+.0f}, {hi:+.0f}]"


def nll_vs(r, who, split):
    """NLL with its change against the original model's (the target's reference)."""
    x, b = r[who][split]["nll"], r["before"][split]["nll"]
    return f"{x:.4f}" if who == "before" else f"{x:.4f} ({pct(rel(x, b))})"


def nll_cells(r, who):
    """Forget, holdout, retain and general NLL of a model; retain and general with their
    change against the original (none for the original itself)."""
    return f"{f4(r[who]['forget']['nll'])} | {f4(r[who]['holdout']['nll'])} | " \
           f"{nll_vs(r, who, 'retain')} | {nll_vs(r, who, 'general')}"


def verdict_cell(r):
    v = r.get("verdict")
    if not v:
        return ""
    return "**met**" if v["met"] else "not met"


def methods_table(reports):
    any_r = next(iter(reports.values()))
    rows = ["| model | steps (stop) | forget NLL | holdout NLL | retain NLL (vs original) | general NLL (vs original) | "
            "MIA AUC loss [95%] | PrivLeak MUSE (Min-K 40%) [95%] | PrivLeak rel. AUC (loss) [95%] | ROUGE-L | MC acc | "
            "verdict |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def extra(r, who):
        v = r.get("verbatim_memorisation", {}).get(who)
        m = r.get("multiple_choice", {}).get(who)
        return (f4(v["rouge_l_f1"]) if v else "", f4(m["acc"]) if m else "")

    rl, mc = extra(any_r, "before")
    rows.append(f"| original (tiny-lm-full) | 0 | {nll_vs(any_r, 'before', 'forget')} | "
                f"{nll_vs(any_r, 'before', 'holdout')} | {nll_vs(any_r, 'before', 'retain')} | "
                f"{nll_vs(any_r, 'before', 'general')} | {auc_cell(any_r, 'before')} | "
                f"{leak_cell(any_r, 'before', 'muse_min_k_40')} | {leak_cell(any_r, 'before', 'relative_auc_loss')} | "
                f"{rl} | {mc} | |")
    rl, mc = extra(any_r, "oracle")
    rows.append(f"| **retrain oracle** | - | {nll_cells(any_r, 'oracle')} | {auc_cell(any_r, 'oracle')} | 0% | 0% | "
                f"{rl} | {mc} | |")
    for name, r in sorted(reports.items()):
        a = r["after"]
        rl, mc = extra(r, "after")
        rows.append(f"| {name} | {r['steps_run']} ({r['stop_reason']}) | {f4(a['forget']['nll'])} | "
                    f"{f4(a['holdout']['nll'])} | {nll_vs(r, 'after', 'retain')} | {nll_vs(r, 'after', 'general')} | "
                    f"{auc_cell(r, 'after')} | {leak_cell(r, 'after', 'muse_min_k_40')} | "
                    f"{leak_cell(r, 'after', 'relative_auc_loss')} | {rl} | {mc} | {verdict_cell(r)} |")
    return "\n".join(rows)


def sweep_table(sweep, lrs):
    rows = ["| method | lr | forget NLL | forget - holdout | retain NLL vs original | general NLL vs original | "
            "MIA AUC loss [95%] | PrivLeak MUSE [95%] | PrivLeak rel. AUC (loss) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ["ga", "ga_gd", "ga_kl"]:
        for lr in lrs:
            r = sweep.get(f"{name}-lr{lr}")
            if r is None:
                continue
            a, b = r["after"], r["before"]
            rows.append(f"| {name} | {lr} | {f4(a['forget']['nll'])} | "
                        f"{a['forget']['nll'] - a['holdout']['nll']:+.4f} | "
                        f"{pct(rel(a['retain']['nll'], b['retain']['nll']))} | "
                        f"{pct(rel(a['general']['nll'], b['general']['nll']))} | {auc_cell(r, 'after')} | "
                        f"{leak_cell(r, 'after', 'muse_min_k_40')} | "
                        f"{pct(r['privleak_relative_auc_percent']['loss'])} |")
    return "\n".join(rows)


def cross_domain_table(reports):
    """Forget = code the model trained on, holdout = code it never saw, retain = books,
    general = papers; the oracle never saw any code."""
    any_r = next(iter(reports.values()))
    rows = ["| model | steps (stop) | code NLL, trained | code NLL, unseen | books NLL (vs original) | "
            "papers NLL (vs original) | MIA AUC loss, trained vs unseen code [95%] | PrivLeak MUSE [95%] | "
            "ROUGE-L (code continuations) | verdict |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]

    def rouge(r, who):
        v = r.get("verbatim_memorisation", {}).get(who)
        return f"{v['rouge_l_f1']:.3f}" if v else ""

    rows.append(f"| original (tiny-lm-full) | - | {nll_cells(any_r, 'before')} | {auc_cell(any_r, 'before')} | "
                f"{leak_cell(any_r, 'before', 'muse_min_k_40')} | {rouge(any_r, 'before')} | |")
    rows.append(f"| **oracle (never saw code)** | - | {nll_cells(any_r, 'oracle')} | {auc_cell(any_r, 'oracle')} | 0% | "
                f"{rouge(any_r, 'oracle')} | |")
    for name, r in sorted(reports.items()):
        a = r["after"]
        rows.append(f"| {name}.yaml | {r['steps_run']} ({r['stop_reason']}) | {f4(a['forget']['nll'])} | "
                    f"{f4(a['holdout']['nll'])} | {nll_vs(r, 'after', 'retain')} | {nll_vs(r, 'after', 'general')} | "
                    f"{auc_cell(r, 'after')} | {leak_cell(r, 'after', 'muse_min_k_40')} | {rouge(r, 'after')} | "
                    f"{verdict_cell(r)} |")
    return "\n".join(rows)


def reports_in(d):
    out = {}
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        p = os.path.join(d, name, "report.json")
        if os.path.exists(p):
            out[name] = load(p)
    return out


def replace_block(text, section, block):
    begin, end = MARKERS[section]
    if begin in text and end in text:
        return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    sys.exit(f"docs/results.md has no {begin} ... {end} markers for the {section} tables")


def stamp(args, commit):
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    took = (f"; {args.seconds // 60} min {args.seconds % 60} s for every run of `{args.command}`, {args.jobs} at a "
            f"time" if args.seconds else "")
    return (f"Generated {when} by `{args.command}` at commit {commit or 'unknown'} on {cpu_name()} "
            f"({os.cpu_count()} cores{took}).")


def books_block(args, commit):
    reports, sweep = reports_in(os.path.join(args.runs, "methods")), reports_in(os.path.join(args.runs, "sweep"))
    if not reports:
        sys.exit(f"{args.runs}: no method reports (run tools/results/run_results.sh)")
    any_r = next(iter(reports.values()))
    lrs = args.lrs.split() if args.lrs else sorted({k.split("-lr", 1)[1] for k in sweep}, key=float)
    sel = any_r.get("selection_split", {})
    if sel.get("enabled"):
        halves = (f" Forget and holdout columns are on the report half ({sel['forget']['report_documents']} forget, "
                  f"{sel['holdout']['report_documents']} holdout documents); the stop rules and the best checkpoint "
                  f"used the other half (eval.selection_split).")
    else:
        halves = " Stop rules and reported numbers read the same documents (eval.selection_split off or absent)."
    begin, end = MARKERS["books"]
    return "\n".join([
        begin,
        f"{stamp(args, commit)} Model sha256 `{any_r['model_sha256'][:16]}...`, oracle "
        f"`{any_r.get('oracle_sha256', '')[:16]}...`; forget set: {any_r['data']['forget']['documents']} documents, "
        f"holdout {any_r['data']['holdout']['documents']}. MIA columns: the final suite on each "
        f"document's first 2048 tokens, members = forget, non-members = holdout, 95% bootstrap intervals over "
        f"documents; PrivLeak MUSE = ((1 - AUC) - (1 - AUC_oracle)) / (1 - AUC_oracle) on Min-K% 40%, PrivLeak "
        f"rel. AUC = (AUC - AUC_oracle) / AUC_oracle on the LOSS attack. NLLs in nats per byte over whole "
        f"splits, changes against the original model. Verdict: |PrivLeak MUSE| <= 5% with retain and general "
        f"NLL at most 2% above the original's.{halves}",
        "",
        "### Every method, recipe defaults (after = final model; NLL in nats per byte)",
        "",
        methods_table(reports),
        "",
        "### LR sweep: GA vs GA+GD vs GA+KL, 60 steps, stop criteria off",
        "",
        sweep_table(sweep, lrs) if sweep else "(no sweep runs found)",
        end])


def entities_block(args, commit):
    d = os.path.join(args.runs, "entities")
    recipes = reports_in(os.path.join(d, "recipes"))
    seeds = reports_in(os.path.join(d, "seeds"))
    if not recipes or not seeds:
        sys.exit(f"{d}: the entity runs are missing (run tools/results/run_results.sh)")
    recipes["wga_gd"] = seeds[min(seeds)]  # the default pair's run of the shipped recipe
    first = recipes["wga_gd"]
    begin, end = MARKERS["entities"]
    names = [n for n in ENTITY_RECIPES if n in recipes]
    return "\n".join([
        begin,
        f"{stamp(args, commit)} NLLs in nats per byte over whole splits; forget and holdout columns, QA and "
        f"canaries as defined above, on the report halves; changes against the original model; PrivLeak with its "
        f"95% bootstrap interval over documents. Default pair (seed {min(seeds)}): model sha256 "
        f"`{first['model_sha256'][:16]}...`, oracle `{first.get('oracle_sha256', '')[:16]}...`.",
        "",
        f"#### Every entity recipe at its defaults, on the default pair (seed {min(seeds)})",
        "",
        summarize.rows([recipes[n] for n in names], [f"{n}.yaml" for n in names]),
        "",
        f"#### The shipped recipe (wga_gd.yaml) over {len(seeds)} seeds of the model/oracle pair",
        "",
        summarize.rows([seeds[s] for s in sorted(seeds)], [f"seed {s}" for s in sorted(seeds)]),
        "",
        summarize.spread([seeds[s] for s in sorted(seeds)]),
        end])


def cross_domain_block(args, commit):
    reports = reports_in(os.path.join(args.runs, "cross_domain"))
    if not reports:
        sys.exit(f"{args.runs}/cross_domain: no reports (run tools/results/run_results.sh)")
    begin, end = MARKERS["cross_domain"]
    return "\n".join([
        begin,
        f"{stamp(args, commit)} The shipped recipes of configs/recipes/cross_domain/ with their defaults; NLLs in "
        f"nats per byte over whole splits, changes against the original model; MIA on the report halves of the "
        f"trained and the unseen code, 95% bootstrap intervals over files.",
        "",
        cross_domain_table(reports),
        end])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("out")
    ap.add_argument("--sections", default="books entities cross_domain")
    ap.add_argument("--command", default="make results")
    ap.add_argument("--lrs", default="")
    ap.add_argument("--seconds", type=int, default=0, help="wall time of the whole run, for the header")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    args = ap.parse_args()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(args.out))).stdout.strip()
    except OSError:
        commit = ""
    with open(args.out) as f:
        text = f.read()
    build = {"books": books_block, "entities": entities_block, "cross_domain": cross_domain_block}
    for section in args.sections.split():
        if section not in build:
            sys.exit(f"unknown section '{section}' (books, entities, cross_domain)")
        text = replace_block(text, section, build[section](args, commit))
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
