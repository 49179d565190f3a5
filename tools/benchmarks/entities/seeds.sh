#!/usr/bin/env bash
# The entity benchmark over several seeds of the model/oracle pair (after `make entities`):
# for each seed in SEEDS, trains entity-lm and its exact retrain oracle from that seed
# (train.seed; the default pair is seed 20261 and is reused from models/entities; `make
# entities` trains 20262 and 20263 too, and a pair missing here is trained first), runs
# RECIPE (default configs/recipes/entities/wga_gd.yaml) against the pair with the same
# unlearning seed, and prints one row per seed and the mean and spread over seeds
# (summarize.py --spread). Pairs go to models/entities/seed-S/, runs to
# runs/entities/seeds/<recipe>/S (an existing run is replaced; an existing pair resumes).
# About 12 minutes per new pair on 2 cores; the runs go JOBS at a time (default 2), each on
# nproc / JOBS threads, after every pair is trained, and share the scoring of each pair's
# original and oracle through eval.cache (runs/entities/eval_cache) with later calls.
#   SEEDS="20261 20262 20263" bash tools/benchmarks/entities/seeds.sh [RECIPE] [key=value ...]
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
recipe="${1:-$root/configs/recipes/entities/wga_gd.yaml}"
shift || true
name="${NAME:-$(basename "$recipe" .yaml)}"  # NAME=...: the runs directory, for a variant of a recipe
source "$root/tools/benchmarks/entities/data_stamp.sh"
source "$root/tools/benchmarks/entities/pair.sh"
stamp="$(entities_data_stamp "$root/data/benchmarks/entities")"
[ -d "$root/models/entities/full-hf" ] && [ "$(cat "$root/models/entities/DATA_SHA256" 2>/dev/null)" = "$stamp" ] ||
  { echo "seeds.sh: run 'make entities' first (models/entities is missing or was trained on other documents)" >&2; exit 2; }
reports=() pairs=()
for seed in ${SEEDS:-20261 20262 20263}; do
  pair="$(entities_pair_dir "$seed")"
  if [ "$seed" != 20261 ]; then
    entities_check_pair "$pair" "$stamp"
    entities_train_pair "$pair" "$seed"
  fi
  pairs+=("$pair")
done
jobs_max="${JOBS:-2}"
cores="$(nproc)"
threads=$(( cores / jobs_max > 0 ? cores / jobs_max : 1 ))
i=0
for seed in ${SEEDS:-20261 20262 20263}; do
  pair="${pairs[$i]}"
  i=$((i + 1))
  out="$root/runs/entities/seeds/$name/$seed"
  rm -rf "$out" "$out.log" "$out.failed"
  mkdir -p "$(dirname "$out")"
  while (( $(jobs -rp | wc -l) >= jobs_max )); do wait -n || true; done
  (OMP_NUM_THREADS="$threads" "$bin" unlearn "$recipe" model="$pair/full-hf" oracle="$pair/oracle-hf" \
     output.dir="$out" eval.cache="$root/runs/entities/eval_cache" "$@" > "$out.log" 2>&1 &&
     echo "seed $seed: $(tail -n 1 "$out.log")" || { echo "seed $seed FAILED: see $out.log" >&2; touch "$out.failed"; }) &
  reports+=("$out/report.json")
done
wait
for seed in ${SEEDS:-20261 20262 20263}; do
  [ ! -e "$root/runs/entities/seeds/$name/$seed.failed" ] || { echo "seeds.sh: the run of seed $seed failed" >&2; exit 1; }
done
python3 "$root/tools/benchmarks/entities/summarize.py" --spread "${reports[@]}"
