#!/usr/bin/env bash
# Runs every recipe in configs/recipes/entities/ once (after `make entities`), then prints
# a markdown row per run (summarize.py) and the retain / holdout QA of the original model,
# the oracle and each unlearned model (score_qa.sh). Runs go to runs/entities/<recipe>
# (an existing one is replaced). About 2 minutes per recipe plus 2 minutes of QA scoring
# on 2 cores. The recipes share one scoring of the original and the oracle (eval.cache under
# runs/entities/eval_cache).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
reports=() finals=()
for recipe in "$root"/configs/recipes/entities/*.yaml; do
  name="$(basename "$recipe" .yaml)"
  rm -rf "$root/runs/entities/$name"
  "$bin" unlearn "$recipe" eval.cache="$root/runs/entities/eval_cache"
  reports+=("$root/runs/entities/$name/report.json")
  finals+=("$root/runs/entities/$name/final")
done
python3 "$root/tools/benchmarks/entities/summarize.py" "${reports[@]}"
TASKS="retain holdout" LETHE_BIN="$bin" bash "$root/tools/benchmarks/entities/score_qa.sh" \
  "$root/models/entities/full-hf" "${finals[@]}"
