#!/usr/bin/env bash
# Single-process launcher: one lethe process using every core of this machine.
#   launch/lethe-local.sh train configs/train/demo.yaml [key=value ...]
# Threads: OMP_NUM_THREADS if set, else all cores. Threads are pinned to cores so the
# OpenMP loops and the BLAS calls do not migrate between them. Kept for existing scripts;
# it is lethe-run.sh with one rank.
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lethe-run.sh" -- "$@"
