#!/usr/bin/env bash
# The single-node SLURM check of launch/slurm/lethe.sbatch (ctest label `slurm`).
#   tools/slurm_test.sh LETHE_BIN   submit a tp=2 unlearn through srun and through mpirun
#                                   and compare each with one process; cancel a running
#                                   job; stop one with the time-limit signal
#   tools/slurm_test.sh --setup     as root: write a one-node slurm.conf (if none exists)
#                                   and start munged, slurmctld and slurmd
# Exits 77 (skipped) where sbatch is not installed or no controller answers.
set -euo pipefail

setup() {
  [ "$(id -u)" = 0 ] || { echo "slurm_test: --setup needs root" >&2; exit 2; }
  command -v slurmctld >/dev/null || { echo "slurm_test: slurmctld not installed (apt-get install slurm-wlm)" >&2; exit 2; }
  local conf=/etc/slurm/slurm.conf host spool=/var/spool/slurm-lethe
  host="$(hostname -s)"
  mkdir -p /etc/slurm "$spool/ctld" "$spool/d" /var/log/slurm /run/munge
  if [ ! -f "$conf" ]; then
    # No task plugin by default, as on the cluster the launch defaults were tried on:
    # srun's --cpu-bind is then a no-op. LETHE_SLURM_TASK_PLUGIN=task/affinity binds.
    local node
    node="$(slurmd -C | head -1)"
    cat >"$conf" <<CONF
ClusterName=lethe-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=${LETHE_SLURM_TASK_PLUGIN:-task/none}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
KillWait=5
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  fi
  chown munge:munge /run/munge
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 30); do
    scontrol ping >/dev/null 2>&1 && sinfo -h -o %T | grep -q idle && { sinfo; exit 0; }
    sleep 1
  done
  echo "slurm_test: the controller did not come up; see /var/log/slurm/" >&2
  exit 1
}

if [ "${1:-}" = --setup ]; then setup; fi

skip() { echo "slurm_test: skipped: $*"; exit 77; }
for c in sbatch squeue scancel scontrol sinfo; do
  command -v "$c" >/dev/null 2>&1 || skip "$c not installed (apt-get install slurm-wlm; tools/slurm_test.sh --setup)"
done
# Without a configuration scontrol looks for a controller through DNS for a minute.
timeout 5 scontrol ping 2>/dev/null | grep -q UP || skip "no SLURM controller answers (tools/slurm_test.sh --setup starts one)"
timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' || skip "no SLURM node is up"
most="$(sinfo -h -o %c | sort -n | tail -1)"
[ "${most:-0}" -ge 2 ] || skip "no node with 2 CPUs for 2 ranks"

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(cd "$(dirname "${1:?usage: tools/slurm_test.sh LETHE_BIN}")" && pwd)/$(basename "$1")"
[ -x "$bin" ] || { echo "slurm_test: $bin is not an executable" >&2; exit 2; }
# The job's files must be where the node can read them: the node is this machine.
work="$(mktemp -d)"
jobs_started=()
cleanup() {
  for j in "${jobs_started[@]}"; do scancel "$j" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail=0
check() {  # check DESCRIPTION COMMAND...
  local what="$1"
  shift
  if "$@"; then echo "ok:   $what"; else echo "FAIL: $what"; fail=1; fi
}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE LETHE_BIN="$bin" LETHE_ROOT="$root"
unset OMP_PROC_BIND OMP_PLACES LETHE_PROGRESS LETHE_LAUNCHER
# Sizes for a node without GPUs: two ranks of one core each.
size=(--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 --time=10)

sed "s#\.\./\.\./#$root/#g" "$root/configs/recipes/ga_gd.yaml" > "$work/recipe.yaml"
small=(train.steps=6 train.batch_size=4 eval.every=0 data.seq_len=64 eval.max_sequences=4 eval.final_max_sequences=4
       eval.mia_max_docs=6 eval.verbatim_max_docs=1)
"$bin" unlearn "$work/recipe.yaml" output.dir="$work/one" "${small[@]}" >"$work/one.out" 2>&1 \
  || { cat "$work/one.out"; echo "slurm_test: the one-process run failed"; exit 1; }

# Every step's terms and gradient norm and every final NLL against the one-process run.
same_run() {
  python3 - "$work/one" "$1" <<'PY'
import json, sys
# The loss is a difference of terms (ascent on forget, descent on retain) and can be near
# zero: compare the terms themselves, and the gradient norm.
def steps(d):
    rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
    return [(r["step"], r["grad_norm"], *[v for _, v in sorted(r["terms"].items())]) for r in rows if "loss" in r]
def finals(d):
    after = json.load(open(d + "/report.json"))["after"]
    return {k: v["nll"] for k, v in after.items() if isinstance(v, dict) and "nll" in v}
a, b = steps(sys.argv[1]), steps(sys.argv[2])
worst = 0.0
ok = len(a) == len(b) == 6 and all(x[0] == y[0] for x, y in zip(a, b))
for x, y in zip(a, b):
    for u, v in zip(x[1:], y[1:]):
        worst = max(worst, abs(u - v) / max(abs(u), 1e-12))
fa, fb = finals(sys.argv[1]), finals(sys.argv[2])
ok = ok and fa.keys() == fb.keys() and len(fa) > 0
for k in fa:
    worst = max(worst, abs(fa[k] - fb.get(k, float("nan"))) / abs(fa[k]))
print(f"  {len(b)} steps, {len(fb)} final NLLs, largest relative difference {worst:.2e}")
sys.exit(0 if ok and worst < 2e-6 else 1)
PY
}

launchers=(srun)
command -v mpirun >/dev/null 2>&1 && launchers+=(mpirun)
for l in "${launchers[@]}"; do
  t0=$(date +%s)
  LETHE_LAUNCHER="$l" sbatch --wait --parsable "${size[@]}" -o "$work/$l.log" -J lethe-test-"$l" \
    "$root/launch/slurm/lethe.sbatch" --tp 2 -- unlearn "$work/recipe.yaml" output.dir="$work/$l" "${small[@]}" \
    >"$work/$l.id" 2>&1
  rc=$?
  echo "$l: job $(cat "$work/$l.id") ended with $rc after $(($(date +%s) - t0)) s"
  check "$l: the tp=2 job succeeded" test "$rc" = 0
  check "$l: two ranks as tp=2 x dp=1" grep -q "parallel: tp=2 x dp=1 over 2 ranks" "$work/$l.log"
  check "$l: no progress-bar redraws in the log" test "$(grep -c $'\r\|\033' "$work/$l.log")" = 0
  check "$l: matches one process" same_run "$work/$l"
  [ "$rc" = 0 ] || cat "$work/$l.log"
done

# A running job, then: scancel ends every rank; the time-limit signal (SIGUSR1 to the batch
# shell, as #SBATCH --signal sends it) makes the run checkpoint and exit 75.
long=(train.steps=100000 train.batch_size=4 eval.every=0 data.seq_len=64 eval.max_sequences=4
      eval.final_max_sequences=4 eval.mia_max_docs=6 eval.verbatim_max_docs=1)
start_long() {  # start_long NAME [overrides...]: submit, wait until it steps; prints the job id
  local name="$1" j
  shift
  j="$(sbatch --parsable "${size[@]}" -o "$work/$name.log" -J lethe-test-"$name" "$root/launch/slurm/lethe.sbatch" \
        --tp 2 -- unlearn "$work/recipe.yaml" output.dir="$work/$name" "${long[@]}" "$@")"
  jobs_started+=("$j")
  for _ in $(seq 240); do
    grep -q "^step " "$work/$name.log" 2>/dev/null && break
    sleep 0.5
  done
  echo "$j"
}
gone() {  # gone JOB DIR: the job left the queue and no rank of it is left
  ! squeue -h -j "$1" 2>/dev/null | grep -q . && ! pgrep -f "output.dir=$2( |\$)" >/dev/null
}
wait_gone() {
  for _ in $(seq 300); do gone "$1" "$2" && return 0; sleep 0.1; done
  return 1
}

j="$(start_long cancel)"
check "cancel: the job is running (two ranks)" test "$(pgrep -f "output.dir=$work/cancel( |\$)" | wc -l)" -ge 2
t0=$(date +%s%N)
scancel "$j"
wait_gone "$j" "$work/cancel"
check "cancel: every rank ended within 30 s" gone "$j" "$work/cancel"
echo "cancel: the job and its ranks were gone after $((($(date +%s%N) - t0) / 1000000)) ms"

j="$(start_long stop output.checkpoint_every=1)"
scancel --batch --signal=USR1 "$j"
wait_gone "$j" "$work/stop"
check "stop: the job ended after SIGUSR1" gone "$j" "$work/stop"
check "stop: the run says it stopped by the signal" grep -q "stopped by SIGUSR1" "$work/stop.log"
check "stop: exit status 75 (resumable)" grep -q "ExitCode=75:0" <(scontrol show job "$j" 2>/dev/null)
check "stop: a run checkpoint was written" test -n "$(ls "$work/stop/checkpoints" 2>/dev/null)"

if [ "$fail" -ne 0 ]; then
  echo "slurm_test: FAILED"
  exit 1
fi
echo "slurm_test: srun and mpirun jobs matched one process; scancel and the time-limit signal ended every rank"
