#!/usr/bin/env bash
# `make results`: the embedded benchmark behind docs/results.md. Runs every recipe in
# configs/recipes on tiny-lm (books forget split, judged against the retrain oracle), then
# an LR sweep of GA, GA+GD and GA+KL at a fixed step count with the stop criteria off (the
# seed study's robustness comparison), and rewrites the tables in docs/results.md from the
# runs' report.json files. About 30 minutes on 2 cores.
#   RESULTS_RUNS=dir   where the runs go (default build/results; emptied first)
#   RESULTS_LRS="..."  learning rates of the sweep
# The final membership-inference suite scores each document's first 2048 tokens
# (eval.mia_max_tokens), as MIA benchmarks score fixed-length snippets; whole books would
# dominate the run time.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
runs="${RESULTS_RUNS:-$root/build/results}"
lrs="${RESULTS_LRS:-3e-5 1e-4 3e-4 1e-3}"
rm -rf "$runs"
mkdir -p "$runs/methods" "$runs/sweep"

# The original model through the same final evaluation (zero steps), for its MIA row.
echo "== original"
"$bin" unlearn "$root/configs/recipes/ga.yaml" train.steps=0 eval.mia_max_tokens=2048 \
  output.dir="$runs/original" > "$runs/original.log"

for recipe in "$root"/configs/recipes/*.yaml; do
  name="$(basename "$recipe" .yaml)"
  echo "== $name"
  "$bin" unlearn "$recipe" eval.mia_max_tokens=2048 output.dir="$runs/methods/$name" > "$runs/methods/$name.log"
  tail -n 1 "$runs/methods/$name.log"
done

for name in ga ga_gd ga_kl; do
  for lr in $lrs; do
    echo "== sweep $name lr=$lr"
    "$bin" unlearn "$root/configs/recipes/$name.yaml" optimizer.lr="$lr" train.steps=60 eval.every=20 \
      stop.forget_reaches_holdout=false stop.retain_ppl_ratio=0 stop.mia_auc_band=0 \
      eval.verbatim_prefix=0 eval.verbatim_continuation=0 eval.mia_max_tokens=2048 \
      output.dir="$runs/sweep/$name-lr$lr" > "$runs/sweep/$name-lr$lr.log"
    tail -n 1 "$runs/sweep/$name-lr$lr.log"
  done
done

python3 "$root/tools/results/make_results.py" "$runs" "$root/docs/results.md" \
  --command "make results" --lrs "$lrs"
echo "docs/results.md updated from $runs"
