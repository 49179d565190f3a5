#!/usr/bin/env bash
# Runs test binaries under one OpenBLAS kernel (OPENBLAS_CORETYPE), so the rounding of
# every kernel this machine can run is exercised, whatever kernel OpenBLAS or lethe
# would pick here. Exits 77 (ctest: skipped) when the CPU cannot run the kernel or the
# installed OpenBLAS does not offer it.
#   bash tools/blas_sweep.sh CORE LETHE_BIN TEST_BINARY[=GTEST_FILTER] ...
set -uo pipefail
core="${1:?usage: blas_sweep.sh CORE LETHE_BIN TEST_BINARY...}"
bin="${2:?}"
shift 2
# Cooperlake and SapphireRapids start from SkylakeX's sgemm/dgemm but may execute AVX-512
# BF16 instructions: run them only where the CPU has them.
case "$core" in
  Cooperlake|SapphireRapids)
    grep -qw avx512_bf16 /proc/cpuinfo || { echo "skip $core: the CPU has no AVX512-BF16"; exit 77; } ;;
esac
v="$(env -u LETHE_BLAS_SELECTED OPENBLAS_CORETYPE="$core" "$bin" version 2>&1)"
if ! grep -q "kernel $core (OPENBLAS_CORETYPE=$core[;)]" <<<"$v"; then
  echo "skip $core: $(grep -E 'BLAS|error' <<<"$v" | head -1 | sed 's/^ *//')"
  exit 77
fi
rc=0
for arg in "$@"; do
  t="${arg%%=*}" filter="*"
  [ "$t" != "$arg" ] && filter="${arg#*=}"
  start=$SECONDS
  if env -u LETHE_BLAS_SELECTED OPENBLAS_CORETYPE="$core" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$t" \
      --gtest_brief=1 --gtest_filter="$filter" >"${TMPDIR:-/tmp}/blas_sweep_$$.log" 2>&1; then
    echo "ok   $core $(basename "$t") ($((SECONDS - start)) s)"
  else
    echo "FAIL $core $(basename "$t")"; cat "${TMPDIR:-/tmp}/blas_sweep_$$.log"; rc=1
  fi
done
rm -f "${TMPDIR:-/tmp}/blas_sweep_$$.log"
exit $rc
