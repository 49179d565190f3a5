#!/usr/bin/env bash
# Scores the entity benchmark's three QA tasks (forget, retain, holdout people) on models:
#   tools/benchmarks/entities/score_qa.sh MODEL [MODEL ...]
# MODEL: a transformers directory, a lethe checkpoint or a run directory (e.g.
# models/entities/full-hf, runs/entities/ga_gd/final). Prints one line per model and task:
# accuracy (the answer scored highest by summed log-probability), acc_norm, and the retrain
# oracle's accuracy on the same task.
#
# `lethe unlearn` scores one task file per run (`eval.mc_task`), so each (model, task) is a
# zero-step run of the GA+GD entity recipe with the model as its starting point; its
# report's "before" block is the model's score. The MIA suite and verbatim checks are cut
# to their minimum since only the multiple-choice numbers are read. About 10 s per model
# and task on 2 cores. TASKS="retain holdout" scores a subset.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
[ $# -ge 1 ] || { sed -n '2,6p' "$0"; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for model in "$@"; do
  model="$(cd "$(dirname "$model")" && pwd)/$(basename "$model")"
  for task in ${TASKS:-forget retain holdout}; do
    out="$tmp/$task.$RANDOM"
    "$bin" unlearn "$root/configs/recipes/entities/ga_gd.yaml" model="$model" train.steps=0 \
      eval.mc_task="$root/data/benchmarks/entities/qa/${task}_qa.jsonl" eval.verbatim_prefix=0 eval.verbatim_continuation=0 \
      eval.mia_max_docs=4 eval.max_sequences=4 eval.final_max_sequences=4 output.dir="$out" >"$tmp/log" 2>&1 \
      || { cat "$tmp/log" >&2; exit 1; }
    python3 - "$out/report.json" "$model" "$task" <<'PY'
import json, sys
mc = json.load(open(sys.argv[1]))["multiple_choice"]
m, o = mc["before"], mc.get("oracle")
line = f"{sys.argv[2]}\t{sys.argv[3]}_qa\titems {m['items']}\tacc {m['acc']:.4f}\tacc_norm {m['acc_norm']:.4f}"
if o:
    line += f"\toracle acc {o['acc']:.4f}"
print(line)
PY
  done
done
