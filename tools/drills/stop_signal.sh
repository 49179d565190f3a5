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
#          no report; the resume's unlearned weights equal the uninterrupted run's. Then
#          LETHE_TEST_SIGNAL_BEFORE (the final evaluation, after training, and after a stop
#          rule ended it early): exit 75, and the resume repeats no step and gives the
#          uninterrupted run's report byte for byte.
# mpirun:  (with MPIEXEC) tp=2, only rank 1 signalled: both ranks stop after the same step
#          (train) or at the same part of the final evaluation (unlearn), and the resume
#          matches the uninterrupted tp=2 run.
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

# A stop during the final evaluation (after training): honoured between its parts; the run
# checkpoint of the last step says training is over and holds the parts already scored, so
# the resume repeats no step and no part, and its report equals the uninterrupted run's.
same_report() { cmp -s "$1/report.json" "$2/report.json"; }
LETHE_TEST_SIGNAL_BEFORE=unlearned "$bin" unlearn "$work/recipe.yaml" output.dir="$work/f" "${small[@]}" \
  >"$work/f.out" 2>&1
rc=$?
check "unlearn: SIGTERM during the final evaluation exits 75 (got $rc)" test "$rc" -eq 75
check "unlearn: it says where it stopped" \
  grep -q "stopped by SIGTERM during the final evaluation, before the unlearned part" "$work/f.out"
check "unlearn: a run checkpoint of the last step (6)" test "$(newest_step "$work/f/checkpoints")" = 6
check "unlearn: the final model is saved, the report not yet" test -e "$work/f/final" -a ! -e "$work/f/report.json"
"$bin" unlearn "$work/recipe.yaml" output.dir="$work/f" "${small[@]}" train.resume=true >"$work/f2.out" 2>&1
check "unlearn: the resume after a stop in the final evaluation succeeds" test "$?" -eq 0
check "unlearn: the resume runs no step" bash -c "! grep -q '^step ' '$work/f2.out'"
check "unlearn: the resume reuses the original's scores from before the stop" \
  grep -q "the original model's final evaluation: from before the stop" "$work/f2.out"
check "unlearn: the resumed report equals the uninterrupted run's" same_report "$work/f" "$work/u_ref"

# A stop rule ended training (step 2 of 6), then the signal: the resume must not train on.
rule=(stop.mia_auc_band=0.49 eval.every=2)
"$bin" unlearn "$work/recipe.yaml" output.dir="$work/r_ref" "${small[@]}" "${rule[@]}" >/dev/null 2>&1 \
  || { echo "unlearn stop-rule reference failed"; exit 1; }
LETHE_TEST_SIGNAL_BEFORE=final "$bin" unlearn "$work/recipe.yaml" output.dir="$work/r" "${small[@]}" "${rule[@]}" \
  >"$work/r.out" 2>&1
rc=$?
check "unlearn: SIGTERM after a stop rule exits 75 (got $rc)" test "$rc" -eq 75
check "unlearn: stopped before the final model" test ! -e "$work/r/final" -a ! -e "$work/r/report.json"
"$bin" unlearn "$work/recipe.yaml" output.dir="$work/r" "${small[@]}" "${rule[@]}" train.resume=true \
  >"$work/r2.out" 2>&1
check "unlearn: the resume keeps the stop rule's end" grep -q "training ended before the stop (MIA AUC" "$work/r2.out"
check "unlearn: after a stop rule the resumed report equals the uninterrupted run's" same_report "$work/r" "$work/r_ref"

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

  # unlearn tp=2, rank 1 signalled before the oracle's part: both ranks stop there.
  "${mpi[@]}" "$bin" unlearn "$work/recipe.yaml" output.dir="$work/mu_ref" parallel.tp=2 "${small[@]}" \
    >/dev/null 2>&1 || { echo "unlearn tp=2 reference failed"; exit 1; }
  LETHE_TEST_SIGNAL_BEFORE=oracle LETHE_TEST_SIGNAL_RANK=1 \
    "${mpi[@]}" -x LETHE_TEST_SIGNAL_BEFORE -x LETHE_TEST_SIGNAL_RANK "$bin" unlearn "$work/recipe.yaml" \
    output.dir="$work/mu" parallel.tp=2 "${small[@]}" >"$work/mu.out" 2>&1
  rc=$?
  check "mpirun tp=2 unlearn: rank 1 signalled in the final evaluation, the job exits non-zero (got $rc)" \
    test "$rc" -ne 0
  check "mpirun tp=2 unlearn: stopped before the oracle's part (rank 0 reports it)" \
    grep -q "during the final evaluation, before the oracle part" "$work/mu.out"
  "${mpi[@]}" "$bin" unlearn "$work/recipe.yaml" output.dir="$work/mu" parallel.tp=2 "${small[@]}" \
    train.resume=true >"$work/mu2.out" 2>&1
  check "mpirun tp=2 unlearn: the resume reuses the unlearned model's scores" \
    grep -q "the unlearned model's final evaluation: from before the stop" "$work/mu2.out"
  check "mpirun tp=2 unlearn: the resumed report equals the uninterrupted tp=2 run's" \
    same_report "$work/mu" "$work/mu_ref"
fi

if [ "$fail" -ne 0 ]; then
  echo "stop_signal: FAILED"
  exit 1
fi
echo "stop_signal: a stop signal checkpointed and ended every run, and each resumed exactly"
