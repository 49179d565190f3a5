#!/usr/bin/env bash
# `make results`: every generated table of docs/results.md, from runs made here and now.
#   books         every recipe in configs/recipes on tiny-lm (books forget split, judged
#                 against the retrain oracle), then an LR sweep of GA, GA+GD and GA+KL at a
#                 fixed step count with the stop criteria off (the seed study's comparison)
#   entities      every recipe in configs/recipes/entities on the entity benchmark's default
#                 pair, and the shipped recipe (wga_gd.yaml) on each of its three pairs, with
#                 the spread over seeds (after `make entities`)
#   cross_domain  the recipes in configs/recipes/cross_domain (forget code, keep books and
#                 papers; after `make models`, which trains the no-code oracle)
# then rewrites each section's block in docs/results.md from the runs' report.json files.
#   RESULTS_SECTIONS="..."  which sections (default: all three)
#   RESULTS_RUNS=dir        where the runs go (default build/results; emptied first)
#   RESULTS_LRS="..."       learning rates of the books sweep
#   RESULTS_JOBS=n          runs at a time (default 2), each with nproc / n threads
#   RESULTS_DOC=file        the document to rewrite (default docs/results.md)
# Every run scores the original and the oracle over whole splits, most of its final
# evaluation: the runs of one model pair share those scores through eval.cache
# (engine/unlearn/eval_cache.h), which the pair's first run fills when it ends, so the
# others wait for it. The longest runs (the entity runs of several hundred steps) start
# first. The books MIA suite scores each document's first 2048 tokens
# (eval.mia_max_tokens), as MIA benchmarks score fixed-length snippets; whole books would
# dominate the run time.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
runs="${RESULTS_RUNS:-$root/build/results}"
sections="${RESULTS_SECTIONS:-books entities cross_domain}"
lrs="${RESULTS_LRS:-3e-5 1e-4 3e-4 1e-3}"
jobs_max="${RESULTS_JOBS:-2}"
cores="$(nproc)"
threads=$(( cores / jobs_max > 0 ? cores / jobs_max : 1 ))
doc="${RESULTS_DOC:-$root/docs/results.md}"
cache="$runs/eval_cache"
entity_seeds="20261 20262 20263"
source "$root/tools/benchmarks/entities/data_stamp.sh"
source "$root/tools/benchmarks/entities/pair.sh"

# What each section needs, checked before anything runs.
for s in $sections; do
  case "$s" in
    books) ;;
    entities)
      stamp="$(entities_data_stamp "$root/data/benchmarks/entities")"
      for seed in $entity_seeds; do
        pair="$(entities_pair_dir "$seed")"
        [ -d "$pair/full-hf" ] && [ -d "$pair/oracle-hf" ] && [ "$(cat "$pair/DATA_SHA256" 2>/dev/null)" = "$stamp" ] ||
          { echo "make results: the entity pair of seed $seed ($pair) is missing or was trained on other documents:" \
              "run 'make entities' first" >&2; exit 2; }
      done ;;
    cross_domain)
      [ -d "$root/models/tiny-lm/oracle-nocode-hf" ] ||
        { echo "make results: models/tiny-lm/oracle-nocode-hf (the cross-domain oracle) is missing: run 'make models'" \
            "first" >&2; exit 2; } ;;
    *) echo "make results: unknown section '$s' in RESULTS_SECTIONS (books, entities, cross_domain)" >&2; exit 2 ;;
  esac
done
has() { [[ " $sections " == *" $1 "* ]]; }

rm -rf "$runs"
mkdir -p "$runs"
start=$(date +%s)

# One run: its log beside its directory, then OUT.done; a failure is recorded in OUT.failed
# and reported at the end.  run_one OUT RECIPE [key=value ...]
run_one() {
  local out="$1"
  shift
  mkdir -p "$(dirname "$runs/$out")"
  if OMP_NUM_THREADS="$threads" "$bin" unlearn "$@" output.dir="$runs/$out" eval.cache="$cache" \
      > "$runs/$out.log" 2>&1; then
    echo "== $out: $(tail -n 1 "$runs/$out.log")"
  else
    echo "== $out FAILED (exit $?): see $runs/$out.log"
    touch "$runs/$out.failed"
  fi
  touch "$runs/$out.done"
}
# launch AFTER OUT RECIPE [key=value ...]: starts the run once a slot is free and, unless
# AFTER is -, once the run AFTER has ended (it filled the cache this one reads).
launch() {
  local after="$1"
  shift
  while (( $(jobs -rp | wc -l) >= jobs_max )) || { [ "$after" != - ] && [ ! -e "$runs/$after.done" ]; }; do
    wait -n || sleep 1
  done
  run_one "$@" &
}

echo "== make results: $sections ($jobs_max runs at a time, $threads threads each)"
books_common=(eval.mia_max_tokens=2048)
# The original model through the books evaluation (zero steps), for its MIA row; it fills
# the cache with the original and the oracle for every books run.
has books && launch - original "$root/configs/recipes/ga.yaml" train.steps=0 "${books_common[@]}"
if has entities; then
  for seed in $entity_seeds; do
    pair="$(entities_pair_dir "$seed")"
    launch - "entities/seeds/$seed" "$root/configs/recipes/entities/wga_gd.yaml" model="$pair/full-hf" \
      oracle="$pair/oracle-hf"
  done
fi
if has cross_domain; then
  launch - cross_domain/rmu "$root/configs/recipes/cross_domain/rmu.yaml"
  launch cross_domain/rmu cross_domain/ga_gd "$root/configs/recipes/cross_domain/ga_gd.yaml"
fi
if has entities; then
  first="entities/seeds/${entity_seeds%% *}"
  for recipe in "$root"/configs/recipes/entities/*.yaml; do
    name="$(basename "$recipe" .yaml)"
    [ "$name" = wga_gd ] && continue  # the default pair's seed run above
    launch "$first" "entities/recipes/$name" "$recipe"
  done
fi
if has books; then
  for recipe in "$root"/configs/recipes/*.yaml; do
    launch original "methods/$(basename "$recipe" .yaml)" "$recipe" "${books_common[@]}"
  done
  for name in ga ga_gd ga_kl; do
    for lr in $lrs; do
      launch original "sweep/$name-lr$lr" "$root/configs/recipes/$name.yaml" optimizer.lr="$lr" train.steps=60 \
        eval.every=20 stop.forget_reaches_holdout=false stop.retain_ppl_ratio=0 stop.mia_auc_band=0 \
        "${books_common[@]}"
    done
  done
fi
wait
failed=$(cd "$runs" && find . -name '*.failed' | sed 's|^\./||; s|\.failed$||' | sort)
if [[ -n "$failed" ]]; then
  echo "make results: these runs failed, $doc left unchanged:" $failed >&2
  exit 1
fi
elapsed=$(( $(date +%s) - start ))
command="make results"
[ "$sections" = "books entities cross_domain" ] || command="RESULTS_SECTIONS=\"$sections\" make results"
python3 "$root/tools/results/make_results.py" "$runs" "$doc" --sections "$sections" \
  --command "$command" --lrs "$lrs" --seconds "$elapsed" --jobs "$jobs_max"
echo "$doc updated from $runs in $(( elapsed / 60 )) min $(( elapsed % 60 )) s"
