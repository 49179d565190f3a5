#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries on this (CPU-only) machine and gathers them,
# with the non-CUDA shared libraries they need, into gpu_bundle/ at the repository root:
# a GPU machine that has the NVIDIA driver but none of this project's build dependencies
# runs them with tools/gpu_check.sh.
#
#   bash tools/gpu_bundle.sh            # build dir build-cuda, bundle gpu_bundle/
#   BUILD_DIR=build-x BUNDLE_DIR=b JOBS=4 bash tools/gpu_bundle.sh
#
# What goes in: every binary of tests/cuda (the CMake target lethe_gpu_tests; the paths are
# listed in <build>/gpu_tests.txt), the benchmarks lethe_bench_gpu and
# lethe_bench_attention, and the `lethe` command itself (one process, no MPI: gpu_check.sh
# runs `lethe unlearn` on the GPU and on the CPU's bf16 emulation), stripped, plus the
# shared libraries they load except the C runtime, the CUDA driver and cuBLAS: OpenBLAS,
# libgfortran, libgomp, libstdc++, the CUDA runtime, and for `lethe` HDF5, yaml-cpp and
# OpenSSL with what they load. Only test_cuda_nccl needs NCCL (below).
# Everything travels xz-compressed (a fifth of the size; OpenBLAS alone is ~36 MB with
# kernels for every x86 generation); gpu_check.sh unpacks it into a temporary directory
# (by hand: xz -dk gpu_bundle/*.xz, then run with LD_LIBRARY_PATH=gpu_bundle).
#
# cuBLASLt (about 500 MB) is not bundled: the binaries open libcublasLt.so.13 with dlopen
# at their first matrix product, from the GPU machine's CUDA toolkit or its PyTorch (the
# nvidia-cublas wheel), which gpu_check.sh finds. Without it every other test still runs.
#
# gpu_bundle/ is gitignored: a copy of the tracked files does not contain it, so send it
# to the GPU machine explicitly, beside the source tree (see the header of gpu_check.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-cuda}"
BUNDLE_DIR="${BUNDLE_DIR:-$ROOT/gpu_bundle}"
LIMIT_MB="${BUNDLE_LIMIT_MB:-40}"  # the bundle travels with the source tree; together they must stay under 64 MiB
start=$SECONDS

command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu_bundle: nvcc not found: the bundle needs the CUDA toolkit (no GPU needed)" >&2; exit 1; }
export PATH="$PATH:/usr/local/cuda/bin"

# Without MPI and NCCL: test_cuda_model links the model, and the bundle must not carry
# libmpi's plugins or NCCL (hundreds of MB). One process, one GPU, needs neither, except
# test_cuda_nccl (LETHE_NCCL_SMOKE): the one-rank NCCL test compiles the communicator
# itself and loads libnccl.so.2 from the GPU machine (PyTorch's nvidia-nccl wheel or a
# toolkit; gpu_check.sh finds it), so libnccl is not bundled either.
gen=()
if [ ! -f "$BUILD_DIR/build.ninja" ] && [ ! -f "$BUILD_DIR/Makefile" ]; then
  command -v ninja >/dev/null && gen=(-G Ninja)
fi
cmake -S "$ROOT" -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLETHE_CUDA=ON -DLETHE_MPI=OFF \
  -DLETHE_NCCL=OFF -DLETHE_NCCL_SMOKE=ON >/dev/null
BENCHES=(lethe_bench_gpu lethe_bench_attention lethe)
nice cmake --build "$BUILD_DIR" --target lethe_gpu_tests "${BENCHES[@]}" --parallel "${JOBS:-2}"

# The test binaries by their paths from CMake (gpu_tests.txt), the benchmarks by name.
mapfile -t BINS < <(grep -v '^$' "$BUILD_DIR/gpu_tests.txt" 2>/dev/null || true)
[ "${#BINS[@]}" -gt 0 ] || { echo "gpu_bundle: $BUILD_DIR/gpu_tests.txt lists no GPU tests (is LETHE_CUDA on?)" >&2; exit 1; }
for b in "${BENCHES[@]}"; do
  bench="$(find "$BUILD_DIR" -type f -name "$b" -perm -u+x | head -1)"
  [ -n "$bench" ] || { echo "gpu_bundle: $b was not built in $BUILD_DIR" >&2; exit 1; }
  BINS+=("$bench")
done

rm -rf "$BUNDLE_DIR"
mkdir -p "$BUNDLE_DIR"
names=()
for bin in "${BINS[@]}"; do
  [ -x "$bin" ] || { echo "gpu_bundle: $bin was not built" >&2; exit 1; }
  t="$(basename "$bin")"
  cp "$bin" "$BUNDLE_DIR/"
  strip --strip-unneeded "$BUNDLE_DIR/$t"
  names+=("$t")
done

# Shared libraries, except the C runtime every Linux has and the CUDA driver/cuBLAS that
# must come from the GPU machine itself (they have to match its driver), and NCCL (about
# 300 MB, from the GPU machine too).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libcuda\.so|libcublasLt\.so|libcublas\.so|libnccl\.so)'
for t in "${names[@]}"; do
  ldd "$BUNDLE_DIR/$t" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    [ -e "$BUNDLE_DIR/$name" ] || cp -L "$path" "$BUNDLE_DIR/$name"
  done
done
chmod u+w "$BUNDLE_DIR"/*.so* 2>/dev/null || true
strip --strip-unneeded "$BUNDLE_DIR"/*.so* 2>/dev/null || true
for t in "${names[@]}"; do xz -6 -T"${JOBS:-2}" -f "$BUNDLE_DIR/$t"; done
xz -6 -T"${JOBS:-2}" -f "$BUNDLE_DIR"/*.so*

# Provenance, so a result can be matched to its source.
{
  echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff HEAD --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%MZ) with $(nvcc --version | tail -1)"
  echo "archs sm_80 sm_90a"
  echo "binaries ${names[*]}"
} > "$BUNDLE_DIR/BUILD_INFO"

size_mb=$(du -sm "$BUNDLE_DIR" | cut -f1)
ls -la "$BUNDLE_DIR"
echo "gpu_bundle: $BUNDLE_DIR is ${size_mb} MiB (limit ${LIMIT_MB} MiB), made in $((SECONDS - start)) s"
if [ "$size_mb" -gt "$LIMIT_MB" ]; then
  echo "gpu_bundle: bundle too large to travel with the source tree" >&2
  exit 1
fi
echo "gpu_bundle: ready. Send $(basename "$BUNDLE_DIR")/ (gitignored, so name it explicitly) with the source tree,"
echo "            then on the GPU machine, from the repository root: bash tools/gpu_check.sh OUTDIR"
