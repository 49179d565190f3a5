#!/usr/bin/env bash
# Crash drill: kill -9 `lethe train` at random moments while it checkpoints every step,
# then check that the newest complete checkpoint loads and that resuming from it ends with
# weights bit-identical to an uninterrupted run.
#   tools/drills/kill_during_save.sh [LETHE_BIN] [TRIALS]
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/build/lethe}"
trials="${2:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/train.yaml" <<YAML
model: $root/configs/models/tiny.yaml
data: {path: $root/configs/demo/corpus.txt, format: bytes}
train: {steps: 40, batch_size: 8, seq_len: 64, log_every: 1000, seed: 11}
optimizer: {lr: 3.0e-3, schedule: cosine, warmup_steps: 4}
checkpoint: {every: 1, keep_last: 2}
YAML

digest() { "$bin" checkpoint-info "$1" | grep '^weights:' | awk '{print $NF}'; }

"$bin" train "$work/train.yaml" checkpoint.dir="$work/ref" >/dev/null || { echo "reference run failed"; exit 1; }
ref="$(digest "$work/ref")"
# Kill within the run's own duration: measure it once.
start=$(date +%s%N)
"$bin" train "$work/train.yaml" checkpoint.dir="$work/timing" >/dev/null
span_ms=$(( ($(date +%s%N) - start) / 1000000 ))

pass=0
fail=0
for t in $(seq 1 "$trials"); do
  dir="$work/run$t"
  delay_ms=$(( (RANDOM * 32768 + RANDOM) % (span_ms > 20 ? span_ms - 10 : 10) + 5 ))
  "$bin" train "$work/train.yaml" checkpoint.dir="$dir" >/dev/null 2>&1 &
  pid=$!
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  latest="none"
  if ls -d "$dir"/step_* >/dev/null 2>&1; then
    # Some checkpoint exists: the newest complete one must load (checksums and all).
    if ! latest="$("$bin" checkpoint-info "$dir" 2>&1 | sed -n 's/^step: //p')" || [ -z "$latest" ]; then
      echo "trial $t: killed at ${delay_ms} ms: no loadable checkpoint"
      fail=$((fail + 1))
      continue
    fi
    resume=train.resume=true
  else
    resume=train.resume=false
  fi
  if ! "$bin" train "$work/train.yaml" checkpoint.dir="$dir" "$resume" >/dev/null 2>"$work/err"; then
    echo "trial $t: killed at ${delay_ms} ms (step $latest): resume failed: $(tail -1 "$work/err")"
    fail=$((fail + 1))
    continue
  fi
  if [ "$(digest "$dir")" = "$ref" ]; then
    echo "trial $t: killed at ${delay_ms} ms of ${span_ms}, resumed from step $latest, final weights bit-identical"
    pass=$((pass + 1))
  else
    echo "trial $t: killed at ${delay_ms} ms (step $latest): final weights differ from the uninterrupted run"
    fail=$((fail + 1))
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
