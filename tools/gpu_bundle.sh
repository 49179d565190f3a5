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
# lethe_bench_attention, the `lethe` command itself (one process, no MPI: gpu_check.sh
# runs `lethe unlearn` on the GPU and on the CPU's bf16 emulation), and where Open MPI is
# installed `lethe_mpi` with a relocatable copy of Open MPI (ompi.tar.xz: two ranks on the
# GPU at tp=2 and dp=2), stripped, plus the
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

# Without MPI and NCCL: test_cuda_model links the model, and no test binary should need
# libmpi or NCCL to start. One process, one GPU, needs neither, except test_cuda_nccl
# (LETHE_NCCL_SMOKE): the one-rank NCCL test compiles the communicator itself and loads
# libnccl.so.2 (about 300 MB) from the GPU machine (PyTorch's nvidia-nccl wheel or a
# toolkit; gpu_check.sh finds it), so libnccl is not bundled. The two-rank runs get their
# own MPI build of lethe (below).
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

# ---- two ranks on one GPU: lethe with MPI, and Open MPI itself ----------------------------
# gpu_check.sh runs `lethe unlearn` at tp=2 and at dp=2 with two ranks sharing the GPU
# (the host-staged communicator: NCCL refuses two ranks on one device). The GPU machine
# need not have MPI: Open MPI's launcher, libraries, plugins and help files travel in
# ompi.tar.xz with their layout under the installation prefix kept, PMIx's beside them,
# and gpu_check.sh relocates them (OPAL_PREFIX, PMIx's component path). lethe_mpi is a
# second build (MPI on, and NCCL where the toolkit has it: ranks on distinct GPUs of a
# multi-GPU machine then run NCCL, from the GPU machine's libnccl as test_cuda_nccl does),
# so that no other binary needs libmpi to start.
ELFS=()  # more files whose shared libraries are bundled
OMPI_SONAMES=" "
if command -v ompi_info >/dev/null && command -v orterun >/dev/null; then
  MPI_BUILD="${BUILD_DIR}-mpi"
  gen=()
  if [ ! -f "$MPI_BUILD/build.ninja" ] && [ ! -f "$MPI_BUILD/Makefile" ]; then
    command -v ninja >/dev/null && gen=(-G Ninja)
  fi
  cmake -S "$ROOT" -B "$MPI_BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLETHE_CUDA=ON -DLETHE_MPI=ON \
    -DLETHE_NCCL=ON -DLETHE_TESTS=OFF -DLETHE_BENCH=OFF >/dev/null
  nice cmake --build "$MPI_BUILD" --target lethe --parallel "${JOBS:-2}"
  grep -q "LETHE_HAVE_MPI" "$MPI_BUILD/CMakeFiles/lethe_parallel.dir/flags.make" 2>/dev/null \
    || grep -q "LETHE_HAVE_MPI" "$MPI_BUILD/build.ninja" \
    || { echo "gpu_bundle: $MPI_BUILD was configured without MPI" >&2; exit 1; }
  cp "$MPI_BUILD/lethe" "$BUNDLE_DIR/lethe_mpi"
  strip --strip-unneeded "$BUNDLE_DIR/lethe_mpi"
  names+=(lethe_mpi)

  ompi_path() { ompi_info --parsable --path "$1" | awk -F: -v k="$1" '$2 == k {print $3; exit}'; }
  prefix="$(ompi_path prefix)"
  libdir="$(ompi_path libdir)"
  pkgdatadir="$(ompi_path pkgdatadir)"
  for d in "$libdir" "$pkgdatadir"; do
    case "$d" in "$prefix"/*) ;; *) echo "gpu_bundle: Open MPI's $d is not under its prefix $prefix" >&2; exit 1 ;; esac
  done
  orterun="$(readlink -f "$(command -v orterun)")"
  # PMIx comes in through Open MPI's pmix plugin (ext3x on Debian).
  pmix_so="$(find "$libdir/" -name 'mca_pmix_*.so' -exec ldd {} + 2>/dev/null | awk '$1 ~ /^libpmix\.so/ {print $3; exit}')"
  [ -n "$pmix_so" ] || { echo "gpu_bundle: Open MPI's pmix plugins under $libdir load no libpmix" >&2; exit 1; }
  pmix_lib="$(dirname "$(readlink -f "$pmix_so")")"
  [ -d "$pmix_lib/pmix" ] || { echo "gpu_bundle: no PMIx plugins beside $pmix_lib" >&2; exit 1; }
  stage="$(mktemp -d)"
  o="$stage/ompi"
  mkdir -p "$o/bin" "$o/${libdir#"$prefix"/}" "$o/${pkgdatadir#"$prefix"/}" "$o/pmix"
  cp -L "$orterun" "$o/bin/orterun"
  cp -L "$(dirname "$orterun")/orted" "$o/bin/orted"
  ln -s orterun "$o/bin/mpirun"
  cp -a "$libdir/." "$o/${libdir#"$prefix"/}/"
  cp -a "$pkgdatadir/." "$o/${pkgdatadir#"$prefix"/}/"
  cp -a "$(dirname "$pmix_lib")/." "$o/pmix/"
  # The plugins stay under libdir; the libraries themselves (Debian keeps only links to them
  # there) are bundled flat with the others below, as the binaries load them.
  rm -rf "$o/${libdir#"$prefix"/}/pkgconfig"
  find "$o" -xtype l -delete
  # What gpu_check.sh needs to know of the layout, relative to the unpacked ompi/.
  printf 'libdir=%s\npmix_lib=pmix/%s\n' "${libdir#"$prefix"/}" "${pmix_lib#"$(dirname "$pmix_lib")"/}" >"$o/LAYOUT"
  mapfile -t ELFS < <(find "$o" -type f \( -name '*.so*' -o -path '*/bin/*' \))
  # What the tree itself holds is not bundled flat again (PMIx's library and plugins).
  while IFS= read -r f; do OMPI_SONAMES+="$(basename "$f") "; done < <(find "$o" -name '*.so*')
  tar -C "$stage" -cf - ompi | xz -6 -T"${JOBS:-2}" >"$BUNDLE_DIR/ompi.tar.xz"
else
  echo "gpu_bundle: no Open MPI here (ompi_info, orterun): the bundle gets no multi-rank run" >&2
fi

# Shared libraries, except the C runtime every Linux has and the CUDA driver/cuBLAS that
# must come from the GPU machine itself (they have to match its driver), NCCL (about
# 300 MB, from the GPU machine too), and Open MPI's own (in ompi.tar.xz).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libresolv\.so|libutil\.so|libanl\.so|libcuda\.so|libcublasLt\.so|libcublas\.so|libnccl\.so)'
for f in "${names[@]/#/$BUNDLE_DIR/}" "${ELFS[@]}"; do
  ldd "$f" 2>/dev/null | awk '/=> \// {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    [[ "$OMPI_SONAMES" == *" $name "* ]] && continue
    [ -e "$BUNDLE_DIR/$name" ] || cp -L "$path" "$BUNDLE_DIR/$name"
  done
done
[ -n "${stage:-}" ] && rm -rf "$stage"
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
