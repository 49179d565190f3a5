#!/usr/bin/env bash
# One command line for every launch: a single process, or tp x dp ranks under mpirun.
#   launch/lethe-run.sh [options] -- COMMAND [args ...]
#   launch/lethe-run.sh --tp 2 --dp 2 -- train cfg.yaml train.steps=10
#   launch/lethe-run.sh --debug -- unlearn configs/recipes/ga.yaml
# docs/launch.md describes every option and the environment each rank gets.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/lethe-run.sh [options] -- COMMAND [args ...]
  --tp N            tensor-parallel ranks (default 1)
  --dp N            data-parallel ranks (default 1); np = tp x dp
  --threads T       OpenMP threads per rank (default: OMP_NUM_THREADS, else cores / ranks)
  --gpus            one GPU per rank: each rank sees only the GPU of its local rank
                    (CUDA_VISIBLE_DEVICES), so the engine always uses device 0
  --hostfile FILE   Open MPI hostfile for several nodes
  --mpi-args "..."  extra arguments for mpirun, split on spaces
  --debug           single-GPU debugging: LETHE_DEBUG=1, CUDA_LAUNCH_BLOCKING=1
  --dry-run         print the command line instead of running it
  --bin PATH        the lethe executable (default: LETHE_BIN, else build/lethe)
Environment: MPIRUN (default mpirun), LETHE_CORES (default nproc); OMP_PROC_BIND /
OMP_PLACES (yours win; otherwise threads are pinned only where a rank owns its cores);
LETHE_PROGRESS (the progress bar; with several ranks, default: on when this script's
stdout is a terminal).
EOF
}

die() { echo "lethe-run: $*" >&2; exit 2; }
is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The executable: LETHE_BIN, else a build in this source tree, else an install (this script
# in PREFIX/share/lethe/launch, lethe in PREFIX/bin), else lethe on PATH.
default_bin() {
  local prefix_bin
  prefix_bin="$(cd "$root/../.." 2>/dev/null && pwd)/bin/lethe"
  if [ -x "$root/build/lethe" ]; then echo "$root/build/lethe"
  elif [ -x "$prefix_bin" ]; then echo "$prefix_bin"
  elif command -v lethe >/dev/null 2>&1; then command -v lethe
  else echo "$root/build/lethe"
  fi
}
tp=1 dp=1 threads="" gpus=0 debug=0 dry=0 hostfile="" mpi_extra="" bin="${LETHE_BIN:-$(default_bin)}"
while [ $# -gt 0 ]; do
  case "$1" in
    --tp) [ $# -ge 2 ] || die "--tp needs a value"; tp="$2"; shift 2 ;;
    --dp) [ $# -ge 2 ] || die "--dp needs a value"; dp="$2"; shift 2 ;;
    --threads) [ $# -ge 2 ] || die "--threads needs a value"; threads="$2"; shift 2 ;;
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a value"; hostfile="$2"; shift 2 ;;
    --mpi-args) [ $# -ge 2 ] || die "--mpi-args needs a value"; mpi_extra="$2"; shift 2 ;;
    --bin) [ $# -ge 2 ] || die "--bin needs a value"; bin="$2"; shift 2 ;;
    --gpus) gpus=1; shift ;;
    --debug) debug=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the lethe command goes after --; see --help)" ;;
  esac
done
[ $# -gt 0 ] || { usage >&2; die "no lethe command given after --"; }
is_count "$tp" || die "--tp must be a positive integer, got '$tp'"
is_count "$dp" || die "--dp must be a positive integer, got '$dp'"
[ -z "$threads" ] || is_count "$threads" || die "--threads must be a positive integer, got '$threads'"
np=$((tp * dp))
cores="${LETHE_CORES:-$(nproc)}"
is_count "$cores" || die "LETHE_CORES must be a positive integer, got '$cores'"

# Ranks on this node share its cores; more threads than cores would spin against each other.
if [ -z "$threads" ]; then
  if [ -n "${OMP_NUM_THREADS:-}" ]; then threads="$OMP_NUM_THREADS"
  else threads=$((cores / np)); [ "$threads" -ge 1 ] || threads=1
  fi
fi

if [ "$dry" = 0 ] && [ ! -x "$bin" ]; then
  echo "lethe-run: $bin not found; run 'make build' first (or set LETHE_BIN / --bin)" >&2
  exit 1
fi

args=("$@")
# The process grid reaches the engine as config overrides; commands that take key=value
# overrides get them, a single process needs none.
if [ "$np" -gt 1 ]; then
  case "${args[0]}" in
    train|unlearn) args+=("parallel.tp=$tp" "parallel.dp=$dp") ;;
  esac
fi

mpirun="${MPIRUN:-mpirun}"
flavour=openmpi  # what --dry-run assumes when no mpirun is installed
if [ "$np" -gt 1 ]; then
  if command -v "$mpirun" >/dev/null 2>&1; then
    "$mpirun" --version 2>&1 | grep -q "Open MPI" || flavour=other
  elif [ "$dry" = 0 ]; then
    echo "lethe-run: $mpirun not found; install Open MPI (or set MPIRUN) to run $np ranks" >&2
    exit 1
  fi
fi
# How Open MPI places the ranks: each rank on cores of its own where they fit, otherwise
# anywhere (more ranks or threads than cores, a hostfile whose nodes it cannot see).
binding=none
if [ "$np" -gt 1 ] && [ "$flavour" = openmpi ] && [ -z "$hostfile" ] && [ "$np" -le "$cores" ] &&
   [ $((np * threads)) -le "$cores" ]; then
  binding=core
fi

env_vars=(OMP_NUM_THREADS="$threads")
# Pin threads only where this process owns its cores: alone on the machine, or bound by
# mpirun. Ranks that all see every core would otherwise pile their threads onto the first
# ones. The user's own OMP_PROC_BIND / OMP_PLACES always win.
if [ -n "${OMP_PROC_BIND:-}" ]; then
  env_vars+=(OMP_PROC_BIND="$OMP_PROC_BIND")
  [ -z "${OMP_PLACES:-}" ] || env_vars+=(OMP_PLACES="$OMP_PLACES")
elif [ "$np" = 1 ] || [ "$binding" = core ]; then
  env_vars+=(OMP_PROC_BIND=close OMP_PLACES="${OMP_PLACES:-cores}")
elif [ -n "${OMP_PLACES:-}" ]; then
  env_vars+=(OMP_PLACES="$OMP_PLACES")
fi
# Open MPI gives every rank a pseudo-terminal, so the engine's own isatty test sees one
# even when mpirun writes to a file: decide on mpirun's stdout instead.
if [ "$np" -gt 1 ] && [ -z "${LETHE_PROGRESS:-}" ]; then
  if [ -t 1 ]; then env_vars+=(LETHE_PROGRESS=1); else env_vars+=(LETHE_PROGRESS=0); fi
fi
if [ "$debug" = 1 ]; then
  # The engine's contract: LETHE_DEBUG=1 synchronises and checks errors after every kernel,
  # checks each layer's output for NaN/Inf and picks deterministic kernels.
  env_vars+=(LETHE_DEBUG=1 CUDA_LAUNCH_BLOCKING=1)
  [ "$np" -gt 1 ] || env_vars+=(CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}")
fi

cmd=()
if [ "$np" = 1 ]; then
  cmd=("$bin" "${args[@]}")
else
  cmd=("$mpirun" -np "$np")
  if [ "$flavour" = openmpi ]; then
    [ "$(id -u)" != 0 ] || cmd+=(--allow-run-as-root)
    if [ "$binding" = core ]; then
      # Each rank owns `threads` neighbouring cores; its OpenMP threads stay inside them.
      cmd+=(--map-by "slot:PE=$threads" --bind-to core)
    elif [ -z "$hostfile" ] && [ "$np" -gt "$cores" ]; then
      cmd+=(--oversubscribe --bind-to none)
    else
      cmd+=(--bind-to none)
    fi
    fwd=()
    for kv in "${env_vars[@]}"; do fwd+=("${kv%%=*}"); done
    if [ -n "$hostfile" ]; then
      cmd+=(--hostfile "$hostfile")
      # Ranks on other nodes start from the remote daemon's environment, not this one:
      # forward what the engine, NCCL and OpenMP read, and where lethe and its libraries
      # are. Only names that are set: Open MPI warns about each unset one.
      while IFS= read -r v; do fwd+=("$v"); done < <(compgen -e | grep -E '^(LETHE_|NCCL_|OMP_)' | sort)
      for v in PATH LD_LIBRARY_PATH; do [ -z "${!v+x}" ] || fwd+=("$v"); done
    fi
    declare -A seen=()
    for v in "${fwd[@]}"; do
      [ -z "${seen[$v]:-}" ] || continue
      seen[$v]=1
      cmd+=(-x "$v")
    done
  else
    # MPICH / Hydra: binding by its own flag, environment passed explicitly.
    [ -z "$hostfile" ] || cmd+=(-f "$hostfile")
    for kv in "${env_vars[@]}"; do cmd+=(-genv "${kv%%=*}" "${kv#*=}"); done
  fi
  # shellcheck disable=SC2206  # split on purpose
  [ -z "$mpi_extra" ] || cmd+=($mpi_extra)
  [ "$gpus" = 0 ] || cmd+=("$root/launch/rank-gpu.sh")
  cmd+=("$bin" "${args[@]}")
fi

if [ "$dry" = 1 ]; then
  printf '%s' "${env_vars[0]}"
  for kv in "${env_vars[@]:1}"; do printf ' %s' "$kv"; done
  for a in "${cmd[@]}"; do printf ' %q' "$a"; done
  printf '\n'
  exit 0
fi
export "${env_vars[@]}"
exec "${cmd[@]}"
