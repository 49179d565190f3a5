#!/usr/bin/env bash
# Single-process launcher: one lethe process using every core of this machine.
#   launch/lethe-local.sh train configs/train/demo.yaml [key=value ...]
# Threads: OMP_NUM_THREADS if set, else all cores. Threads are pinned to cores so the
# OpenMP loops and the BLAS calls do not migrate between them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
if [ ! -x "$bin" ]; then
  echo "lethe-local: $bin not found; run 'make build' first" >&2
  exit 1
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
export OMP_PROC_BIND="${OMP_PROC_BIND:-close}"
export OMP_PLACES="${OMP_PLACES:-cores}"
exec "$bin" "$@"
