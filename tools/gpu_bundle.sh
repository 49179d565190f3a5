#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries on this (CPU-only) machine and gathers them,
# with the non-CUDA shared libraries they need, into gpu_bundle/ at the repository root:
# a GPU machine that has the CUDA driver and cuBLASLt but none of this project's build
# dependencies runs them with tools/gpu_check.sh.
#
#   bash tools/gpu_bundle.sh            # build dir build-cuda, bundle gpu_bundle/
#   BUILD_DIR=build-x BUNDLE_DIR=b bash tools/gpu_bundle.sh
#
# cuBLASLt (about 500 MB) is not bundled: the GPU machine's CUDA toolkit or its PyTorch
# (the nvidia-cublas wheel) provides libcublasLt.so.13, and gpu_check.sh finds it there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-cuda}"
BUNDLE_DIR="${BUNDLE_DIR:-$ROOT/gpu_bundle}"
LIMIT_MB="${BUNDLE_LIMIT_MB:-40}"  # the bundle travels with the source tree; together they must stay under 64 MiB
TARGETS=(test_cuda_ops lethe_bench_gpu)

command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu_bundle: nvcc not found: the bundle needs the CUDA toolkit (no GPU needed)" >&2; exit 1; }
export PATH="$PATH:/usr/local/cuda/bin"

if [ ! -f "$BUILD_DIR/build.ninja" ] && [ ! -f "$BUILD_DIR/Makefile" ]; then
  gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S "$ROOT" -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLETHE_CUDA=ON
fi
nice cmake --build "$BUILD_DIR" --target "${TARGETS[@]}" --parallel "${JOBS:-2}"

rm -rf "$BUNDLE_DIR"
mkdir -p "$BUNDLE_DIR"
for t in "${TARGETS[@]}"; do
  bin="$(find "$BUILD_DIR" -type f -name "$t" -perm -u+x | head -1)"
  [ -n "$bin" ] || { echo "gpu_bundle: $t was not built in $BUILD_DIR" >&2; exit 1; }
  cp "$bin" "$BUNDLE_DIR/"
  strip --strip-unneeded "$BUNDLE_DIR/$t"
done

# Shared libraries, except the C runtime every Linux has and the CUDA driver/cuBLASLt that
# must come from the GPU machine itself (they have to match its driver).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libcuda\.so|libcublasLt\.so|libcublas\.so)'
for t in "${TARGETS[@]}"; do
  ldd "$BUNDLE_DIR/$t" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    [ -e "$BUNDLE_DIR/$name" ] || cp -L "$path" "$BUNDLE_DIR/$name"
  done
done
chmod u+w "$BUNDLE_DIR"/*.so* 2>/dev/null || true
strip --strip-unneeded "$BUNDLE_DIR"/*.so* 2>/dev/null || true
# OpenBLAS alone is ~36 MB (kernels for every x86 generation) and compresses 9:1; the
# libraries travel as .xz and gpu_check.sh unpacks them beside the binaries.
xz -6 -T2 -f "$BUNDLE_DIR"/*.so*

# Provenance, so a result can be matched to its source.
{
  echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%MZ) with $(nvcc --version | tail -1)"
  echo "archs sm_80 sm_90a"
} > "$BUNDLE_DIR/BUILD_INFO"

size_mb=$(du -sm "$BUNDLE_DIR" | cut -f1)
ls -la "$BUNDLE_DIR"
echo "gpu_bundle: $BUNDLE_DIR is ${size_mb} MiB (limit ${LIMIT_MB} MiB)"
if [ "$size_mb" -gt "$LIMIT_MB" ]; then
  echo "gpu_bundle: bundle too large to travel with the source tree" >&2
  exit 1
fi
echo "gpu_bundle: ready; on the GPU machine run: bash tools/gpu_check.sh"
