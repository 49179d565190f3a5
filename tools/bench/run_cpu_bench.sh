#!/usr/bin/env bash
# Forward+backward tokens/s on the CPU: lethe_bench_cpu against transformers'
# LlamaForCausalLM, same cases, same thread count, one markdown table.
#
#   bash tools/bench/run_cpu_bench.sh [case ...]     (default: all three cases)
#   THREADS=2 WARMUP=1 ITERS=3 bash tools/bench/run_cpu_bench.sh tiny
#
# Both runtimes spin-wait in their thread pools, so any other load on the machine
# (a compiler, a test run) slows them by far more than its share: each run first waits
# up to IDLE_WAIT seconds for the CPUs to go idle and says so when they did not.
set -euo pipefail
ARGS="$*"
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-$(nproc)}
WARMUP=${WARMUP:-1}
ITERS=${ITERS:-3}
IDLE_WAIT=${IDLE_WAIT:-120}
CASES=("$@")
[[ ${#CASES[@]} -eq 0 || ${CASES[0]} == all ]] && CASES=(tiny llama2-7b-layer yi-6b-layer)

echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "nproc: $(nproc)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: THREADS=$THREADS WARMUP=$WARMUP ITERS=$ITERS bash $0 $ARGS"
echo

BIN=build/tools/bench/lethe_bench_cpu
# LETHE_BENCH may be off in an existing build directory; turning it on only adds this target.
if ! grep -qs lethe_bench_cpu build/build.ninja; then
  log=$(cmake -S . -B build -G Ninja -DLETHE_BENCH=ON 2>&1) || { echo "$log"; exit 1; }
fi
log=$(ninja -C build lethe_bench_cpu 2>&1) || { echo "$log"; exit 1; }

echo "lethe $("$BIN" --blas)"
HAVE_TORCH=1
python3 -c 'import torch, transformers' 2> /dev/null || HAVE_TORCH=0
[[ $HAVE_TORCH == 1 ]] && echo "torch $(python3 -c 'import torch; print(torch.__version__, "BLAS:", torch.backends.mkl.is_available() and "MKL" or "other", "CPU capability:", torch.backends.cpu.get_cpu_capability())' 2>/dev/null)"

FLAGS=(--threads "$THREADS" --warmup "$WARMUP" --iters "$ITERS" --json)
# Returns once two consecutive seconds were >= 95% idle (from /proc/stat), or after IDLE_WAIT s.
wait_idle() {
  local quiet=0 waited=0 a b k tot
  while ((quiet < 2)); do
    if ((waited >= IDLE_WAIT)); then
      echo "warning: CPUs still busy after ${IDLE_WAIT}s; the next numbers are suspect" >&2
      return
    fi
    read -ra a < /proc/stat; sleep 1; read -ra b < /proc/stat
    tot=0
    for k in 1 2 3 4 5 6 7 8; do tot=$((tot + b[k] - a[k])); done
    if ((100 * (b[4] - a[4]) >= 95 * tot)); then quiet=$((quiet + 1)); else quiet=0; fi
    waited=$((waited + 1))
  done
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

echo "| case | batch x seq | lethe tok/s | torch tok/s | lethe/torch | lethe GFLOP/s |"
echo "|---|---|---:|---:|---:|---:|"
for c in "${CASES[@]}"; do
  wait_idle
  l=$("$BIN" --case "$c" "${FLAGS[@]}")
  ltok=$(field "$l" tokens_per_s)
  shape="$(field "$l" batch) x $(field "$l" seq)"
  gf=$(printf '%.1f' "$(field "$l" model_gflops_per_s)")
  if [[ $HAVE_TORCH == 1 ]]; then
    wait_idle
    t=$(python3 tools/bench/torch_step.py --case "$c" "${FLAGS[@]}")
    ttok=$(field "$t" tokens_per_s)
    ratio=$(python3 -c "print(f'{$ltok / $ttok:.2f}')")
    printf '| %s | %s | %.0f | %.0f | %s | %s |\n' "$c" "$shape" "$ltok" "$ttok" "$ratio" "$gf"
  else
    printf '| %s | %s | %.0f | - | - | %s |\n' "$c" "$shape" "$ltok" "$gf"
  fi
done
if [[ $HAVE_TORCH == 0 ]]; then
  echo
  echo "torch/transformers is not importable: torch columns are absent."
fi
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
