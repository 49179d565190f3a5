#!/usr/bin/env bash
# NaN drill: a NaN loss must stop `lethe train` and `lethe unlearn` before any checkpoint,
# best model, export or report is written over.
#   tools/drills/nan_stop.sh [LETHE_BIN]
#
# train:   LETHE_TEST_INJECT_NAN_STEP=k (a testing hook in train_cmd.cpp) makes step k's
#          loss NaN. A run paused at step 4 (checkpoints step 2 and 4) is resumed with a NaN
#          at step 5: it must fail naming the step, leave the checkpoint directory
#          byte-identical, and a clean resume must still end bit-identical to an
#          uninterrupted run.
# unlearn: a learning rate of 1e30 blows the weights up after the first update, so the
#          loss of step 2 is NaN (no hook needed). The run must fail naming the term and
#          the step, keep checkpoint step 1 and the step-0 `best` model loadable and
#          unchanged, and write no `final`, export or report.
# debug:   the same two runs under LETHE_DEBUG=1 must stop at the first op whose output is
#          non-finite and name its step, term, layer, pass and tensor.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/build/lethe}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
check() {  # check DESCRIPTION COMMAND...
  local what="$1"
  shift
  if "$@"; then echo "ok:   $what"; else echo "FAIL: $what"; fail=1; fi
}
# Every file under a directory with its hash: equal listings mean nothing was written.
tree_hash() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
digest() { "$bin" checkpoint-info "$1" | awk '/^weights:/ {print $NF}'; }

# ---- lethe train ------------------------------------------------------------------------
cat > "$work/train.yaml" <<YAML
model: $root/configs/models/tiny.yaml
data: {path: $root/configs/demo/corpus.txt, format: bytes}
train: {steps: 8, batch_size: 4, seq_len: 32, log_every: 1, seed: 5}
optimizer: {lr: 3.0e-3}
checkpoint: {every: 2}
YAML
"$bin" train "$work/train.yaml" checkpoint.dir="$work/ref" >/dev/null || { echo "reference run failed"; exit 1; }
ref="$(digest "$work/ref")"
ref4="$(digest "$work/ref/step_00000004")"

"$bin" train "$work/train.yaml" checkpoint.dir="$work/run" train.run_steps=4 >/dev/null || { echo "first leg failed"; exit 1; }
before="$(tree_hash "$work/run")"
LETHE_TEST_INJECT_NAN_STEP=5 "$bin" train "$work/train.yaml" checkpoint.dir="$work/run" train.resume=true \
  >"$work/train.out" 2>"$work/train.err"
rc=$?
check "train: NaN at step 5 exits 1 (got $rc)" test "$rc" -eq 1
check "train: the error names the NaN and the step" grep -q "loss is nan at step 5; stopping before the update" "$work/train.err"
check "train: checkpoint directory byte-identical after the NaN" test "$before" = "$(tree_hash "$work/run")"
check "train: no staging directory left" test -z "$(find "$work/run" -maxdepth 1 -name '.*' -print -quit)"
check "train: step 4 still the newest checkpoint and loadable" \
  test "$("$bin" checkpoint-info "$work/run" | sed -n 's/^step: //p')" = 4
check "train: step 4 weights equal the uninterrupted run's step 4" test "$(digest "$work/run/step_00000004")" = "$ref4"
"$bin" train "$work/train.yaml" checkpoint.dir="$work/run" train.resume=true >/dev/null 2>&1
check "train: a clean resume ends bit-identical to the uninterrupted run" test "$(digest "$work/run")" = "$ref"

# ---- lethe unlearn ----------------------------------------------------------------------
sed "s#\.\./\.\./#$root/#g" "$root/configs/recipes/ga_gd.yaml" > "$work/recipe.yaml"
out="$work/unlearn"
"$bin" unlearn "$work/recipe.yaml" output.dir="$out" train.steps=6 train.batch_size=4 optimizer.lr=1e30 \
  output.checkpoint_every=1 output.export_hf=true eval.every=0 data.seq_len=64 eval.max_sequences=4 \
  eval.mia_max_docs=4 eval.verbatim_max_docs=1 >"$work/unlearn.out" 2>"$work/unlearn.err"
rc=$?
check "unlearn: NaN exits 1 (got $rc)" test "$rc" -eq 1
check "unlearn: the error names the term, the NaN and the step" \
  grep -Eq "term .* has loss -?nan at step [0-9]+; stopping before the update" "$work/unlearn.err"
nan_step="$(sed -n 's/.* at step \([0-9]*\); stopping.*/\1/p' "$work/unlearn.err")"
prev=$(printf 'step_%08d' $((nan_step - 1)))
check "unlearn: checkpoint $prev (the step before the NaN) is the newest and loadable" \
  test "$("$bin" checkpoint-info "$out/checkpoints" | sed -n 's/^step: //p')" = "$((nan_step - 1))"
check "unlearn: no checkpoint at or after the NaN step, no staging directory" \
  test "$(ls -A "$out/checkpoints" | grep -v '^LATEST$' | sort | tail -1)" = "$prev"
check "unlearn: the step-0 best model is intact" test "$("$bin" checkpoint-info "$out/best" | sed -n 's/^step: //p')" = 0
check "unlearn: no final model" test ! -e "$out/final"
check "unlearn: no transformers export" test -z "$(find "$out" -name '*.safetensors' -print -quit)"
check "unlearn: no report" test ! -e "$out/report.json" -a ! -e "$out/report.md"

# ---- LETHE_DEBUG=1: the first non-finite tensor is named ---------------------------------
LETHE_DEBUG=1 "$bin" unlearn "$work/recipe.yaml" output.dir="$work/debug" train.steps=6 train.batch_size=4 \
  optimizer.lr=1e30 eval.every=0 data.seq_len=64 eval.max_sequences=4 eval.mia_max_docs=4 \
  eval.verbatim_max_docs=1 >/dev/null 2>"$work/debug.err"
rc=$?
check "debug unlearn: exits 1 (got $rc)" test "$rc" -eq 1
check "debug unlearn: names the step, term, layer, pass and tensor" \
  grep -Eq "non-finite value at step 2, term [^:]+: layer 0 forward, self_attn.q_proj, k_proj and v_proj output \[[0-9]+,[0-9]+\]: first" \
  "$work/debug.err"
check "debug unlearn: no final model" test ! -e "$work/debug/final"
LETHE_DEBUG=1 "$bin" train "$work/train.yaml" optimizer.lr=1e30 checkpoint.dir="$work/debug_train" checkpoint.every=1 \
  >/dev/null 2>"$work/debug_train.err"
rc=$?
check "debug train: exits 1 (got $rc)" test "$rc" -eq 1
check "debug train: names the step, layer, pass and tensor" \
  grep -Eq "non-finite value at step 2: layer 0 forward, self_attn.q_proj, k_proj and v_proj output" "$work/debug_train.err"

if [ "$fail" -ne 0 ]; then
  echo "nan_stop: FAILED"
  exit 1
fi
echo "nan_stop: a NaN stopped train and unlearn before anything was written over"
