#!/usr/bin/env bash
# `make results`: the embedded benchmark behind docs/results.md. Runs every recipe in
# configs/recipes on tiny-lm (books forget split, judged against the retrain oracle), then
# an LR sweep of GA, GA+GD and GA+KL at a fixed step count with the stop criteria off (the
# seed study's robustness comparison), and rewrites the tables in docs/results.md from the
# runs' report.json files.
#   RESULTS_RUNS=dir   where the runs go (default build/results; emptied first)
#   RESULTS_LRS="..."  learning rates of the sweep
#   RESULTS_JOBS=n     runs at a time (default 2), each with nproc / n threads
# Every run scores the original and the oracle over whole splits, which is two thirds of
# its final evaluation: the runs share those scores through eval.cache
# (engine/unlearn/eval_cache.h), filled by the first run. The final membership-inference
# suite scores each document's first 2048 tokens (eval.mia_max_tokens), as MIA benchmarks
# score fixed-length snippets; whole books would dominate the run time.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
runs="${RESULTS_RUNS:-$root/build/results}"
lrs="${RESULTS_LRS:-3e-5 1e-4 3e-4 1e-3}"
jobs_max="${RESULTS_JOBS:-2}"
cores="$(nproc)"
threads=$(( cores / jobs_max > 0 ? cores / jobs_max : 1 ))
cache="$runs/eval_cache"
common=(eval.mia_max_tokens=2048 "eval.cache=$cache")
rm -rf "$runs"
mkdir -p "$runs/methods" "$runs/sweep"
start=$(date +%s)

# One run on N threads: its log beside its directory; a failure is recorded, and reported
# at the end.  run_one N OUT RECIPE [key=value ...]
run_one() {
  local n="$1" out="$2"
  shift 2
  if OMP_NUM_THREADS="$n" "$bin" unlearn "$@" output.dir="$runs/$out" > "$runs/$out.log" 2>&1; then
    echo "== $out: $(tail -n 1 "$runs/$out.log")"
  else
    echo "== $out FAILED (exit $?): see $runs/$out.log"
    touch "$runs/$out.failed"
  fi
}
launch() {
  while (( $(jobs -rp | wc -l) >= jobs_max )); do wait -n || true; done
  run_one "$threads" "$@" &
}

# The original model through the same final evaluation (zero steps), for its MIA row; it
# also scores the original and the oracle into the cache, alone and on every core.
echo "== original ($cores threads; then $jobs_max runs at a time, $threads threads each)"
run_one "$cores" original "$root/configs/recipes/ga.yaml" train.steps=0 "${common[@]}"

for recipe in "$root"/configs/recipes/*.yaml; do
  launch "methods/$(basename "$recipe" .yaml)" "$recipe" "${common[@]}"
done
for name in ga ga_gd ga_kl; do
  for lr in $lrs; do
    launch "sweep/$name-lr$lr" "$root/configs/recipes/$name.yaml" optimizer.lr="$lr" train.steps=60 eval.every=20 \
      stop.forget_reaches_holdout=false stop.retain_ppl_ratio=0 stop.mia_auc_band=0 "${common[@]}"
  done
done
wait
failed=$(cd "$runs" && find . -name '*.failed' | sed 's|^\./||; s|\.failed$||' | sort)
if [[ -n "$failed" ]]; then
  echo "make results: these runs failed, docs/results.md left unchanged:" $failed >&2
  exit 1
fi
elapsed=$(( $(date +%s) - start ))
python3 "$root/tools/results/make_results.py" "$runs" "$root/docs/results.md" \
  --command "make results" --lrs "$lrs" --seconds "$elapsed" --jobs "$jobs_max"
echo "docs/results.md updated from $runs in $(( elapsed / 60 )) min $(( elapsed % 60 )) s"
