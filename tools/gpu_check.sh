#!/usr/bin/env bash
# Everything a GPU check needs, in one run of a few minutes: the device, the GPU op
# tests, the forget+retain step benchmark against transformers, and a summary table.
# Runs the binaries that tools/gpu_bundle.sh built on a CPU machine (gpu_bundle/), so the
# GPU machine needs only the NVIDIA driver, cuBLASLt (its CUDA toolkit or PyTorch's
# nvidia-cublas wheel) and, for the comparison, PyTorch + transformers.
#
#   bash tools/gpu_check.sh [results_dir]      # default results dir: gpu_bundle/results/
#   GPU_CHECK_QUICK=1 ...                      # tests and one benchmark case only
#   GPU_CHECK_SANITIZE=1 ...                   # also run the op tests under compute-sanitizer
#
# The tests run as binaries, not through ctest: CTest's files name paths on the build
# machine. Time limits keep the whole check under ten minutes even when something hangs.
#
# Exit status: 0 all tests passed; 1 a test failed or a binary broke; 2 no GPU; 3 no bundle.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${GPU_BUNDLE:-$ROOT/gpu_bundle}"
RES="${1:-$BUNDLE/results}"
mkdir -p "$RES"
say() { printf '\n== %s\n' "$*"; }

# ---- the device -------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no GPU: nvidia-smi is not installed (no NVIDIA driver on this machine)" >&2
  exit 2
fi
if ! nvidia-smi -L >"$RES/devices.txt" 2>&1 || ! grep -q "^GPU " "$RES/devices.txt"; then
  echo "gpu_check: no GPU: nvidia-smi lists no device ($(head -1 "$RES/devices.txt"))" >&2
  exit 2
fi
say "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv | tee "$RES/device.csv"
DEVICE="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

[ -x "$BUNDLE/test_cuda_ops" ] || {
  echo "gpu_check: no bundle at $BUNDLE: run 'bash tools/gpu_bundle.sh' on the build machine first and bring gpu_bundle/ along" >&2
  exit 3
}
cat "$BUNDLE/BUILD_INFO" 2>/dev/null

# The bundle's shared libraries travel xz-compressed; unpack them beside the binaries,
# where the binaries' $ORIGIN rpath looks.
for z in "$BUNDLE"/*.so*.xz; do
  [ -e "$z" ] || continue
  lib="${z%.xz}"
  [ -s "$lib" ] && continue
  if command -v xz >/dev/null; then xz -dc "$z" >"$lib"
  else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$z" "$lib"
  fi || { echo "gpu_check: cannot unpack $z" >&2; exit 3; }
done

# ---- libraries: the bundle's own, then cuBLASLt from wherever this machine has it ---------
find_cublaslt() {
  local d
  for d in ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
    ls "$d"/libcublasLt.so.13* >/dev/null 2>&1 && { echo "$d"; return; }
  done
  local p
  p="$(ldconfig -p 2>/dev/null | awk '/libcublasLt\.so\.13/ {print $NF; exit}')"
  [ -n "$p" ] && { dirname "$p"; return; }
  # PyTorch's CUDA wheels ship cuBLASLt under site-packages/nvidia/.
  for py in python3 python; do
    command -v $py >/dev/null || continue
    p="$($py - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for r in roots:
    hits = glob.glob(os.path.join(r, "nvidia", "**", "libcublasLt.so.13*"), recursive=True)
    if hits:
        print(os.path.dirname(hits[0])); break
PY
)"
    [ -n "$p" ] && { echo "$p"; return; }
  done
}
LT_DIR="$(find_cublaslt)"
if [ -z "$LT_DIR" ]; then
  echo "gpu_check: libcublasLt.so.13 not found (no CUDA 13 toolkit and no PyTorch nvidia-cublas wheel)" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$BUNDLE:$LT_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "cuBLASLt from $LT_DIR"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"  # CPU references in the tests

# ---- tests ------------------------------------------------------------------------------
say "GPU op tests (test_cuda_ops vs the CPU reference)"
timeout 180 "$BUNDLE/test_cuda_ops" --gtest_output="json:$RES/gpu_tests.json" 2>&1 | tee "$RES/gpu_tests.log"
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -eq 124 ] && echo "gpu_check: the GPU tests timed out after 180 s" >&2
if [ "$test_rc" -ne 0 ]; then
  # A kernel fault poisons the CUDA context for every later test in the process: run each
  # test alone so the table names the ones that fail by themselves.
  say "each test in its own process"
  "$BUNDLE/test_cuda_ops" --gtest_list_tests | awk '/^[^ ]/ {s=$1} /^  / {print s $1}' | while read -r t; do
    [ "$SECONDS" -gt 360 ] && { echo "(time budget spent: the rest not run alone)"; break; }
    if timeout 60 "$BUNDLE/test_cuda_ops" --gtest_filter="$t" >"$RES/isolated.log" 2>&1; then echo "PASS $t"
    else echo "FAIL $t"; grep -E "Failure|error|Error" "$RES/isolated.log" | head -5 | sed 's/^/     /'; fi
  done | tee "$RES/gpu_tests_isolated.txt"
fi
if [ -n "${GPU_CHECK_SANITIZE:-}" ] && command -v compute-sanitizer >/dev/null; then
  say "compute-sanitizer memcheck (op tests, without the 7B block)"
  timeout 240 compute-sanitizer --tool memcheck --print-limit 20 "$BUNDLE/test_cuda_ops" \
    --gtest_filter='CudaOps.*' 2>&1 | tail -40 | tee "$RES/sanitizer.log"
fi
# On a machine with a GPU a skipped test means the binary could not use it (for example a
# driver older than the CUDA 13 runtime in the bundle): that is a failure, not a pass.
if [ "$test_rc" -eq 0 ] && grep -q "^\[  SKIPPED \]" "$RES/gpu_tests.log"; then
  echo "gpu_check: GPU tests skipped although nvidia-smi sees a device: $(grep -m1 -i 'no CUDA device' "$RES/gpu_tests.log")" >&2
  test_rc=1
fi

# ---- benchmark --------------------------------------------------------------------------
bench_rc=0
if [ -x "$BUNDLE/lethe_bench_gpu" ]; then
  say "benchmark: lethe forget+retain step"
  quick=(); [ -n "${GPU_CHECK_QUICK:-}" ] && quick=(--quick)
  timeout 150 "$BUNDLE/lethe_bench_gpu" "${quick[@]}" --json "$RES/bench_lethe.json" 2>&1 | tee "$RES/bench_lethe.log"
  bench_rc=${PIPESTATUS[0]}
  if command -v python3 >/dev/null && python3 -c "import torch, transformers" 2>/dev/null; then
    say "benchmark: transformers LlamaForCausalLM, same step"
    match=(); [ -s "$RES/bench_lethe.json" ] && match=(--match "$RES/bench_lethe.json")
    PYTHONUNBUFFERED=1 timeout 200 python3 "$ROOT/tools/bench/torch_gpu_step.py" "${quick[@]}" "${match[@]}" \
      --json "$RES/bench_torch.json" 2>&1 | tee "$RES/bench_torch.log"
  else
    echo "(PyTorch/transformers not importable: no comparison)"
  fi
else
  echo "(no lethe_bench_gpu in the bundle: benchmark skipped)"
fi

# ---- summary ----------------------------------------------------------------------------
say "summary ($DEVICE)"
python3 - "$RES" <<'PY' || echo "(python3 missing: see $RES for raw results)"
import json, os, sys
res = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(res, name)) as f:
            return json.load(f)
    except Exception:
        return None
t = load("gpu_tests.json")
if t:
    cases = [c for s in t.get("testsuites", []) for c in s.get("testsuite", [])]
    failed = [c["name"] for c in cases if c.get("failures")]
    skipped = [c["name"] for c in cases if c.get("result") == "SKIPPED"]
    print(f"tests: {len(cases) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped")
    for n in failed:
        print(f"  FAILED {n}")
else:
    print("tests: no result file (the test binary crashed or timed out)")
try:
    with open(os.path.join(res, "gpu_tests_isolated.txt")) as f:
        alone = [l.split()[1] for l in f if l.startswith("FAIL ")]
    print(f"run alone, failing: {', '.join(alone) or 'none'}")
except OSError:
    pass
L, T = load("bench_lethe.json"), load("bench_torch.json")
if L:
    tor = {r["case"]: r for r in (T or {}).get("results", [])}
    print(f"{'case':20} {'layers':>6} {'lethe tok/s':>12} {'TFLOP/s':>8} {'MFU':>6} {'attn f+b':>8} "
          f"{'fwd wmma/mma':>13} {'torch tok/s':>12} {'ratio':>6}")
    for r in L.get("results", []):
        o = tor.get(r["case"], {})
        tt = o.get("tokens_per_s")
        ratio = f"{r['tokens_per_s'] / tt:6.2f}" if tt else "   n/a"
        mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") else "   n/a"
        tts = f"{tt:12.0f}" if tt else f"{o.get('error', 'n/a')[:12]:>12}"
        fwd = f"{r.get('attention_fwd_tflops_wmma', 0):6.0f}/{r.get('attention_fwd_tflops_mma', 0):<6.0f}"
        print(f"{r['case']:20} {r['layers']:6d} {r['tokens_per_s']:12.0f} {r['model_tflops']:8.1f} {mfu:>6} "
              f"{r.get('attention_tflops', 0):8.1f} {fwd:>13} {tts} {ratio}")
    print("(attention columns in TFLOP/s: forward+backward, and forward alone per forward kernel)")
PY
if [ "$test_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ]; then
  echo "gpu_check: FAILED (tests exit $test_rc, benchmark exit $bench_rc); logs in $RES" >&2
  exit 1
fi
echo "gpu_check: OK; results in $RES"
