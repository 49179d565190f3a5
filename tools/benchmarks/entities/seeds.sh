#!/usr/bin/env bash
# The entity benchmark over several seeds of the model/oracle pair (after `make entities`):
# for each seed in SEEDS, trains entity-lm and its exact retrain oracle from that seed
# (train.seed; the default pair is seed 20261 and is reused from models/entities), runs
# RECIPE (default configs/recipes/entities/wga_gd.yaml) against the pair with the same
# unlearning seed, and prints one row per seed and the mean and spread over seeds
# (summarize.py --spread). Pairs go to models/entities/seed-S/, runs to
# runs/entities/seeds/<recipe>/S (an existing run is replaced; an existing pair resumes).
# About 12 minutes per new pair and 3 per run on 2 cores.
#   SEEDS="20261 20262 20263" bash tools/benchmarks/entities/seeds.sh [RECIPE] [key=value ...]
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
recipe="${1:-$root/configs/recipes/entities/wga_gd.yaml}"
shift || true
name="$(basename "$recipe" .yaml)"
source "$root/tools/benchmarks/entities/data_stamp.sh"
stamp="$(entities_data_stamp "$root/data/benchmarks/entities")"
[ -d "$root/models/entities/full-hf" ] && [ "$(cat "$root/models/entities/DATA_SHA256" 2>/dev/null)" = "$stamp" ] ||
  { echo "seeds.sh: run 'make entities' first (models/entities is missing or was trained on other documents)" >&2; exit 2; }
reports=()
for seed in ${SEEDS:-20261 20262 20263}; do
  if [ "$seed" = 20261 ]; then
    pair="$root/models/entities"
  else
    pair="$root/models/entities/seed-$seed"
    entities_check_pair "$pair" "$stamp"
    for which in full oracle; do
      [ -d "$pair/$which-hf" ] && continue
      resume=false
      [ -d "$pair/$which" ] && resume=true
      "$bin" train "$root/configs/train/entity-lm-$which.yaml" train.seed="$seed" \
        checkpoint.dir="$pair/$which" train.resume=$resume
      rm -rf "$pair/$which-hf.new"
      "$bin" convert lethe-to-hf "$pair/$which" "$pair/$which-hf.new" dtype=f32
      mv "$pair/$which-hf.new" "$pair/$which-hf"
    done
  fi
  out="$root/runs/entities/seeds/$name/$seed"
  rm -rf "$out"
  "$bin" unlearn "$recipe" model="$pair/full-hf" oracle="$pair/oracle-hf" output.dir="$out" "$@"
  reports+=("$out/report.json")
done
python3 "$root/tools/benchmarks/entities/summarize.py" --spread "${reports[@]}"
