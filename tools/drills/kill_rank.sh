#!/usr/bin/env bash
# Rank-failure drill: `lethe train` with parallel.tp=2 parallel.dp=2 under mpirun -np 4 on
# CPU; at a random training step one random rank is killed with SIGKILL. Every trial must
# end the whole job with a non-zero exit within LIMIT seconds (no rank left hanging).
#   tools/drills/kill_rank.sh [LETHE_BIN] [TRIALS] [LIMIT_S]
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/build/lethe}"
trials="${2:-10}"
limit="${3:-30}"
steps=400
work="$(mktemp -d)"
mpi_pid=""
cleanup() {
  [ -n "$mpi_pid" ] && kill -9 "$mpi_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# Open MPI refuses root without these; --oversubscribe lets 4 ranks share fewer cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
mpirun="${MPIRUN:-mpirun}"

# The rank processes of a job: descendants of mpirun whose environment names their rank
# (Open MPI: OMPI_COMM_WORLD_RANK; MPICH/Hydra: PMI_RANK).
rank_pid() {
  local want=$1 pid env
  for pid in $(pgrep -f -- "$bin train" 2>/dev/null); do
    [ -r "/proc/$pid/environ" ] || continue
    env="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null)"
    grep -qx "LETHE_DRILL_JOB=$work" <<<"$env" || continue
    if grep -Eqx "(OMPI_COMM_WORLD_RANK|PMI_RANK)=$want" <<<"$env"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

pass=0
fail=0
for t in $(seq 1 "$trials"); do
  at_step=$(( RANDOM % (steps / 2) + 2 ))
  victim=$(( RANDOM % 4 ))
  log="$work/trial$t.log"
  LETHE_DRILL_JOB="$work" "$mpirun" -np 4 --oversubscribe -x LETHE_DRILL_JOB "$bin" train \
    "$root/configs/train/demo.yaml" parallel.tp=2 parallel.dp=2 train.steps=$steps train.log_every=1 \
    checkpoint.dir="$work/ckpt$t" >"$log" 2>&1 &
  mpi_pid=$!
  # Wait for rank 0 to report the chosen step (or for the job to end early).
  while kill -0 "$mpi_pid" 2>/dev/null && ! grep -Eq "^step +$at_step/" "$log"; do sleep 0.05; done
  pid="$(rank_pid "$victim")"
  if [ -z "$pid" ]; then
    echo "trial $t: rank $victim not found at step $at_step (job ended early?)"
    wait "$mpi_pid"
    mpi_pid=""
    fail=$((fail + 1))
    continue
  fi
  kill -9 "$pid"
  start=$(date +%s%N)
  # Wait at most LIMIT + 30 s, then count the trial as a hang and kill the job.
  while kill -0 "$mpi_pid" 2>/dev/null && [ $(( ($(date +%s%N) - start) / 1000000000 )) -lt $((limit + 30)) ]; do
    sleep 0.05
  done
  if kill -0 "$mpi_pid" 2>/dev/null; then
    kill -9 "$mpi_pid" 2>/dev/null
    wait "$mpi_pid" 2>/dev/null
    mpi_pid=""
    echo "trial $t: killed rank $victim at step $at_step: HANG (still running after $((limit + 30)) s)"
    fail=$((fail + 1))
    continue
  fi
  wait "$mpi_pid"
  rc=$?
  mpi_pid=""
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  secs="$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  if [ "$rc" -ne 0 ] && [ "$ms" -le $((limit * 1000)) ]; then
    echo "trial $t: killed rank $victim (pid $pid) at step $at_step: job exited $rc after ${secs} s"
    pass=$((pass + 1))
  else
    echo "trial $t: killed rank $victim (pid $pid) at step $at_step: FAIL, exit $rc after ${secs} s"
    tail -3 "$log"
    fail=$((fail + 1))
  fi
done
echo "$pass passed, $fail failed (limit ${limit} s)"
[ "$fail" -eq 0 ]
