#!/usr/bin/env bash
# Stop-signal drill: SIGTERM (a scheduler's time limit or preemption; SIGUSR1 and SIGINT
# alike) makes `lethe train` and `lethe unlearn` checkpoint after the current step and exit
# with status 75, and a resume ends exactly where an uninterrupted run ends.
#   tools/drills/stop_signal.sh LETHE_BIN [MPIEXEC]
#
# train:   LETHE_TEST_SIGNAL_AT_STEP=4 (a testing hook: the process sends itself SIGTERM
#          during step 4) stops a run that checkpoints only at the end; then a real
#          `kill -TERM` at an unknown step of a longer run. Each: exit 75, the newest
#          checkpoint is the step it stopped after, the resume is bit-identical to an
#          uninterrupted run. Without checkpoint.dir the signal keeps its default action.
# unlearn: the hook at step 3 of 6: exit 75, a run checkpoint at step 3, no final model and
#          no report; the resume's unlearned weights equal the uninterrupted run's.
# mpirun:  (with MPIEXEC) tp=2, only rank 1 signalled: both ranks stop after the same step,
#          and the resume matches the uninterrupted tp=2 run.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/build/lethe}"
mpiexec="${2:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
check() {  # check DESCRIPTION COMMAND...
  local what="$1"
  shift
  if "$@"; then echo "ok:   $what"; else echo "FAIL: $what"; fail=1; fi
}
digest() { "$bin" checkpoint-info "$1" | awk '/^weights:/ {print $NF}'; }
newest_step() { "$bin" checkpoint-info "$1" | sed -n 's/^step: //p'; }
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# ---- lethe train ------------------------------------------------------------------------
cat > "$work/train.yaml" <<YAML
model: $root/configs/models/tiny.yaml
data: {path: $root/configs/demo/corpus.txt, format: bytes}
train: {steps: 8, batch_size: 4, seq_len: 32, log_every: 1, seed: 5}
optimizer: {lr: 3.0e-3}
YAML
"$bin" train "$work/train.yaml" checkpoint.dir="$work/ref" >/dev/null || { echo "reference run failed"; exit 1; }
LETHE_TEST_SIGNAL_AT_STEP=4 "$bin" train "$work/train.yaml" checkpoint.dir="$work/run" >"$work/train.out" 2>&1
rc=$?
check "train: SIGTERM during step 4 exits 75 (got $rc)" test "$rc" -eq 75
check "train: it says where it stopped" grep -q "stopped by SIGTERM after step 4 of 8" "$work/train.out"
check "train: the newest checkpoint is step 4" test "$(newest_step "$work/run")" = 4
"$bin" train "$work/train.yaml" checkpoint.dir="$work/run" train.resume=true >/dev/null 2>&1
check "train: the resume ends bit-identical to the uninterrupted run" test "$(digest "$work/run")" = "$(digest "$work/ref")"

LETHE_TEST_SIGNAL_AT_STEP=4 "$bin" train "$work/train.yaml" >/dev/null 2>&1
rc=$?
check "train: without checkpoints SIGTERM keeps its default action (got $rc)" test "$rc" -eq 143

# A real signal at a moment the test does not choose.
"$bin" train "$work/train.yaml" train.steps=3000 train.log_every=100000 checkpoint.dir="$work/ref_long" >/dev/null 2>&1
"$bin" train "$work/train.yaml" train.steps=3000 train.log_every=100000 checkpoint.dir="$work/long" \
  >"$work/long.out" 2>&1 &
pid=$!
sleep 1.5
kill -TERM "$pid"
wait "$pid"
rc=$?
stopped="$(sed -n 's/.*stopped by SIGTERM after step \([0-9]*\) of.*/\1/p' "$work/long.out")"
check "train: kill -TERM exits 75 (got $rc)" test "$rc" -eq 75
check "train: kill -TERM checkpointed the step it stopped after (${stopped:-none})" \
  test -n "$stopped" -a "$(newest_step "$work/long")" = "$stopped"
"$bin" train "$work/train.yaml" train.steps=3000 train.log_every=100000 checkpoint.dir="$work/long" \
  train.resume=true >/dev/null 2>&1
check "train: after kill -TERM the resume is bit-identical" test "$(digest "$work/long")" = "$(digest "$work/ref_long")"

# ---- lethe unlearn ----------------------------------------------------------------------
sed "s#\.\./\.\./#$root/#g" "$root/configs/recipes/ga_gd.yaml" > "$work/recipe.yaml"
small=(train.steps=6 train.batch_size=4 eval.every=0 data.seq_len=64 eval.max_sequences=4 eval.final_max_sequences=4
       eval.mia_max_docs=6 eval.verbatim_max_docs=1)
unlearned() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["unlearned_sha256"])' "$1/report.json"; }
"$bin" unlearn "$work/recipe.yaml" output.dir="$work/u_ref" "${small[@]}" >/dev/null 2>&1 || { echo "unlearn reference failed"; exit 1; }
LETHE_TEST_SIGNAL_AT_STEP=3 "$bin" unlearn "$work/recipe.yaml" output.dir="$work/u" "${small[@]}" >"$work/u.out" 2>&1
rc=$?
check "unlearn: SIGTERM during step 3 exits 75 (got $rc)" test "$rc" -eq 75
check "unlearn: it says where it stopped" grep -q "stopped by SIGTERM at step 3 of 6" "$work/u.out"
check "unlearn: a run checkpoint at step 3" test "$(newest_step "$work/u/checkpoints")" = 3
check "unlearn: no final model and no report yet" test ! -e "$work/u/final" -a ! -e "$work/u/report.json"
"$bin" unlearn "$work/recipe.yaml" output.dir="$work/u" "${small[@]}" train.resume=true >/dev/null 2>&1
check "unlearn: the resume's unlearned weights equal the uninterrupted run's" \
  test "$(unlearned "$work/u")" = "$(unlearned "$work/u_ref")"

# ---- under mpirun: one rank signalled, every rank stops after the same step -------------
if [ -n "$mpiexec" ]; then
  mpi=("$mpiexec" -np 2 --oversubscribe)
  [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
  "${mpi[@]}" "$bin" train "$work/train.yaml" parallel.tp=2 checkpoint.dir="$work/mref" >/dev/null 2>&1 \
    || { echo "tp=2 reference failed"; exit 1; }
  LETHE_TEST_SIGNAL_AT_STEP=5 LETHE_TEST_SIGNAL_RANK=1 "${mpi[@]}" -x LETHE_TEST_SIGNAL_AT_STEP -x LETHE_TEST_SIGNAL_RANK \
    "$bin" train "$work/train.yaml" parallel.tp=2 checkpoint.dir="$work/mrun" >"$work/m.out" 2>&1
  rc=$?
  check "mpirun tp=2: rank 1 signalled, the job exits non-zero (got $rc)" test "$rc" -ne 0
  check "mpirun tp=2: stopped after step 5 (rank 0 reports it)" grep -q "stopped by SIGTERM after step 5 of 8" "$work/m.out"
  check "mpirun tp=2: the checkpoint of step 5 is complete" test "$(newest_step "$work/mrun")" = 5
  "${mpi[@]}" "$bin" train "$work/train.yaml" parallel.tp=2 checkpoint.dir="$work/mrun" train.resume=true >/dev/null 2>&1
  check "mpirun tp=2: the resume ends bit-identical to the uninterrupted tp=2 run" \
    test "$(digest "$work/mrun")" = "$(digest "$work/mref")"
fi

if [ "$fail" -ne 0 ]; then
  echo "stop_signal: FAILED"
  exit 1
fi
echo "stop_signal: a stop signal checkpointed and ended every run, and each resumed exactly"
