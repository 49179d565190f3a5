#!/usr/bin/env bash
# Per-rank shim: give this rank the GPU of its local rank and nothing else, then run the
# command. With one visible device the engine's choice is always device 0, whatever rule
# it uses, and NCCL still finds peers by bus id. Used by lethe-run.sh --gpus and the
# SLURM script when srun does not bind GPUs itself.
set -euo pipefail
local_rank="${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-${MPI_LOCALRANKID:-${PMIX_LOCAL_RANK:-}}}}"
if [ -z "$local_rank" ]; then
  echo "rank-gpu: no local rank in the environment (not started by mpirun or srun?)" >&2
  exit 1
fi
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  # Index into the devices this job was given, not the node's numbering.
  IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
  if [ "$local_rank" -ge "${#visible[@]}" ]; then
    echo "rank-gpu: local rank $local_rank but only ${#visible[@]} GPUs visible ($CUDA_VISIBLE_DEVICES)" >&2
    exit 1
  fi
  export CUDA_VISIBLE_DEVICES="${visible[$local_rank]}"
else
  export CUDA_VISIBLE_DEVICES="$local_rank"
fi
exec "$@"
