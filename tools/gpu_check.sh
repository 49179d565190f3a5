#!/usr/bin/env bash
# The GPU check in one command: the device, every GPU test binary, `lethe unlearn` (GA+GD
# on the embedded benchmark) on the GPU beside the CPU's bf16 emulation and at tp=2 and
# dp=2 with two ranks sharing the GPU (Open MPI travels in the bundle), the benchmarks
# (attention alone against torch's SDPA flash backend, the engine's forget+retain step
# against transformers, where the step's time goes by op family), and a summary; at most
# 540 s in all on one H100/H200, everything it finds left in OUTDIR as three files.
#
# 1. On the build machine (CUDA 13 toolkit, no GPU needed), from the repository root:
#        bash tools/gpu_bundle.sh
#    It builds the binaries and gathers them, with the shared libraries they need, into
#    gpu_bundle/ (about 26 MiB, xz-compressed; at most 40). Rebuild it right before a run:
#    its BUILD_INFO names the commit, and a bundle older than the tree tests old kernels.
# 2. Send the source tree to the GPU machine WITH gpu_bundle/. gpu_bundle/ is gitignored,
#    so a copy of the tracked files (git archive, a clone, a copy of the working tree that
#    skips ignored paths) does not contain it: name gpu_bundle/ explicitly among the paths
#    to copy, or copy it beside the tree afterwards. GPU_BUNDLE=DIR points elsewhere.
# 3. On the GPU machine, from the repository root:
#        bash tools/gpu_check.sh OUTDIR
#
# OUTDIR (required; created if missing) receives three files:
#   stages.txt         one verdict line per stage, written as each stage ends (what a
#                      check killed from outside leaves)
#   summary.txt        the device, the peak assumed, per-binary test counts and failures,
#                      the benchmark tables, what was skipped and why, the time used
#   gpu_check.tar.gz   every log and JSON file (and summary.txt again)
# Intermediate files live in a temporary directory that is removed at the end.
#
# The GPU machine needs only the NVIDIA driver (r580 or newer for the CUDA 13 runtime in
# the bundle); libcublasLt.so.13 from a CUDA 13 toolkit or PyTorch's nvidia-cublas wheel
# for the matrix products (without it the other tests still run, and the GEMM tests fail
# naming the library); PyTorch + transformers for the comparison (optional); python3 for
# the summary table. The bundle's libraries (libstdc++, libgomp, OpenBLAS, the CUDA
# runtime) are put on LD_LIBRARY_PATH for lethe's binaries only, never for python3.
#
#   GPU_CHECK_QUICK=1      one case per benchmark: the step at T=2048, attention at T=4096
#   GPU_CHECK_SANITIZE=1   also compute-sanitizer: memcheck over the op, numerics and step
#                          tests, racecheck and synccheck over the attention tests (the
#                          benchmarks then run their quick cases, to stay within the cap)
#   GPU_CHECK_BUDGET_S=N   the time cap in seconds (default 540)
#
# The tests run as binaries, not through ctest: CTest's files name paths on the build
# machine. Every stage's time limit comes from what is left of the cap, so the check ends
# within it even when something hangs; killed (SIGTERM, SIGINT), it still writes OUTDIR.
#
# Exit status: 0 all passed; 1 a test, a lethe benchmark or a sanitizer found a failure;
# 2 no GPU; 3 no bundle or a broken one; 4 usage (no OUTDIR).
set -uo pipefail
SECONDS=0
TOTAL="${GPU_CHECK_BUDGET_S:-540}"
END_RESERVE=15  # kept for the summary and the archive
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${GPU_BUNDLE:-$ROOT/gpu_bundle}"

if [ $# -ne 1 ] || [ -z "$1" ] || [ "${1#-}" != "$1" ]; then
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}" >&2
  echo "gpu_check: usage: bash tools/gpu_check.sh OUTDIR" >&2
  exit 4
fi
mkdir -p "$1" || { echo "gpu_check: cannot create $1" >&2; exit 4; }
OUT="$(cd "$1" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")" || { echo "gpu_check: no temporary directory" >&2; exit 4; }
RES="$WORK/gpu_check"  # becomes the archive
LIB="$WORK/bin"        # the bundle's binaries and libraries, unpacked
mkdir -p "$RES" "$LIB"
STAGES="$RES/stages.txt"  # one line per stage: what ran, its status, its time
: >"$STAGES"

say() { printf '\n== %s\n' "$*" | tee -a "$RES/console.log"; }
log() { printf '%s\n' "$*" | tee -a "$RES/console.log"; }
# Each verdict also goes to the console and to OUTDIR at once: a check killed from outside
# before finish() still leaves what it had decided.
stage() {
  printf '%-34s %s\n' "$1" "$2" | tee -a "$STAGES"
  cp "$STAGES" "$OUT/stages.txt" 2>/dev/null || true
}
FAILED=0
fail() { FAILED=1; }

# ---- the end: summary and archive, also when killed -------------------------------------
finish() {
  local rc=$1
  trap - EXIT INT TERM
  {
    echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%MZ), ${SECONDS} s of ${TOTAL} s)"
    [ -s "$RES/device.csv" ] && { echo; echo "device:"; sed 's/^/  /' "$RES/device.csv"; }
    [ -s "$BUNDLE/BUILD_INFO" ] && { echo; echo "bundle:"; sed 's/^/  /' "$BUNDLE/BUILD_INFO"; }
    echo; echo "stages:"; sed 's/^/  /' "$STAGES"
    if command -v python3 >/dev/null 2>&1; then
      echo; timeout 10 python3 - "$RES" <<'PY' 2>&1 || echo "(summary table failed: see the archive)"
import glob, json, os, sys
res = sys.argv[1]
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return None
rows = []
for log in sorted(glob.glob(os.path.join(res, "tests_*.log"))):
    path = log[:-len(".log")] + ".json"
    t = load(path)
    name = os.path.basename(path)[len("tests_"):-len(".json")]
    if not t:
        rows.append(f"  {name:20} no result file (crashed, timed out or did not start: see its log)")
        continue
    cases = [(s["name"], c) for s in t.get("testsuites", []) for c in s.get("testsuite", [])]
    failed = [f"{s}.{c['name']}" for s, c in cases if c.get("failures")]
    skipped = [f"{s}.{c['name']}" for s, c in cases if c.get("result") == "SKIPPED"]
    rows.append(f"  {name:20} {len(cases) - len(failed) - len(skipped):3d} passed {len(failed):3d} failed "
                f"{len(skipped):3d} skipped")
    for n in failed:
        c = next(c for s, c in cases if f"{s}.{c['name']}" == n)
        msg = (c["failures"][0].get("failure", "") or "").strip().splitlines()
        rows.append(f"      FAILED {n}: {msg[-1][:160] if msg else ''}")
if rows:
    print("tests (gtest results per binary):")
    print("\n".join(rows))
for path in sorted(glob.glob(os.path.join(res, "isolated_*.txt"))):
    with open(path) as f:
        lines = f.read().splitlines()
    alone = [l.split()[1] for l in lines if l.startswith("FAIL ")]
    ran = sum(l.startswith(("PASS ", "FAIL ")) for l in lines)
    cut = " (then the time budget was spent)" if any("time budget" in l for l in lines) else ""
    print(f"  run alone ({os.path.basename(path)[9:-4]}): {ran} run, failing: {', '.join(alone) or 'none'}{cut}")
PY
      timeout 10 python3 "$ROOT/tools/bench/gpu_bench_summary.py" "$RES" 2>&1 \
        || echo "(benchmark tables failed: see the JSON files in the archive)"
      if [ -s "$RES/unlearn_compare.txt" ]; then
        echo; echo "lethe unlearn (GA+GD, 20 steps), cuda against the CPU's bf16 emulation (every step in the archive):"
        awk 'NR == 1 || /^(before|after) training:/ {p = 1} /^step / {p = 0} p || /^largest/' "$RES/unlearn_compare.txt"
      fi
      for l in tp dp; do
        [ -s "$RES/unlearn_${l}2_compare.txt" ] || continue
        echo "lethe unlearn at ${l}=2 (two ranks on the GPU) against one process: $(tail -1 "$RES/unlearn_${l}2_compare.txt")"
      done
    else
      echo; echo "(python3 not found: no per-test or benchmark tables; see the logs in the archive)"
    fi
    echo
    case "$rc" in
      0) echo "result: OK (exit 0)" ;;
      1) echo "result: FAILED (exit 1)" ;;
      2) echo "result: no GPU (exit 2)" ;;
      3) echo "result: no usable bundle (exit 3)" ;;
      *) echo "result: stopped (exit $rc)" ;;
    esac
  } >"$RES/summary.txt" 2>&1
  cp "$RES/summary.txt" "$OUT/summary.txt"
  tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" gpu_check 2>/dev/null \
    || echo "gpu_check: could not write $OUT/gpu_check.tar.gz" >&2
  printf '\n' >&2; cat "$OUT/summary.txt"
  echo "gpu_check: results in $OUT (summary.txt, gpu_check.tar.gz)"
  rm -rf "$WORK"
  exit "$rc"
}
CHILD=""; ECHO=""
# shellcheck disable=SC2317  # called by the trap
on_signal() {
  stage "interrupted" "by a signal after ${SECONDS} s"
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null  # timeout(1) passes it on
  [ -n "$ECHO" ] && kill "$ECHO" 2>/dev/null
  finish 1
}
trap 'finish 1' EXIT
trap on_signal INT TERM

# Seconds a stage may run: at most WANT, at most until DEADLINE (seconds since start,
# optional), and never into the end reserve of the whole cap.
cap() {
  local want=$1 deadline=${2:-$TOTAL} left
  left=$(( TOTAL - END_RESERVE - SECONDS ))
  (( deadline - SECONDS < left )) && left=$(( deadline - SECONDS ))
  (( want < left )) && left=$want
  (( left < 0 )) && left=0
  echo "$left"
}
# run SECONDS LOG COMMAND...: the command under timeout(1) (SIGTERM, then SIGKILL 5 s later,
# all inside SECONDS), its output into LOG and onto the console; returns its exit status
# (124 or 137: timed out). It runs in the background and the script waits, so a signal to
# the script is handled at once: timeout(1) runs in a process group of its own and would
# not receive one sent to the script's group.
run() {
  local t=$1 log=$2 rc
  shift 2
  : >"$log"
  timeout -k 5 "$(( t > 6 ? t - 5 : 1 ))" "$@" </dev/null >"$log" 2>&1 &
  CHILD=$!
  tail -n +1 -f --pid="$CHILD" "$log" 2>/dev/null | tee -a "$RES/console.log" &
  ECHO=$!
  wait "$CHILD"; rc=$?
  wait "$ECHO" 2>/dev/null
  CHILD=""; ECHO=""
  return "$rc"
}

# ---- libraries the bundle leaves to this machine: cuBLASLt and NCCL ----------------------
# find_lib SONAME: the directory holding SONAME (or a longer version of it): a CUDA toolkit,
# the loader's cache, or PyTorch's CUDA wheels (site-packages/nvidia/...).
find_lib() {
  local so=$1 d p py
  for d in ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
    ls "$d/$so"* >/dev/null 2>&1 && { echo "$d"; return; }
  done
  p="$(ldconfig -p 2>/dev/null | awk -v so="$so" 'index($1, so) == 1 {print $NF; exit}')"
  [ -n "$p" ] && [ -e "$p" ] && { dirname "$p"; return; }
  for py in python3 python; do
    command -v $py >/dev/null || continue
    p="$(timeout 30 $py - "$so" <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for r in roots:
    hits = glob.glob(os.path.join(r, "nvidia", "**", sys.argv[1] + "*"), recursive=True)
    if hits:
        print(os.path.dirname(hits[0])); break
PY
)"
    [ -n "$p" ] && { echo "$p"; return; }
  done
}
LT_DIR="$(find_lib libcublasLt.so.13)"
NCCL_DIR="$(find_lib libnccl.so.2)"
log "cuBLASLt: ${LT_DIR:-not found}; NCCL: ${NCCL_DIR:-not found}"

# ---- the bundle (checked first, so a machine without a GPU still verifies it) ------------
say "bundle"
bundle_ok=1
MPI_WHY="no bundle"
mapfile -t TESTS < <(cd "$BUNDLE" 2>/dev/null && for z in test_*.xz; do [ -e "$z" ] && echo "${z%.xz}"; done)
if [ ! -d "$BUNDLE" ] || [ "${#TESTS[@]}" -eq 0 ]; then
  bundle_ok=0
  msg="no bundle at $BUNDLE: build it on the build machine with 'bash tools/gpu_bundle.sh', then send gpu_bundle/ along with the source tree (it is gitignored, so it must be named explicitly)"
  [ -e "$BUNDLE/test_cuda_ops" ] && msg="the bundle at $BUNDLE was made by an older tools/gpu_bundle.sh (uncompressed binaries): rebuild it with 'bash tools/gpu_bundle.sh'"
  log "gpu_check: $msg" >&2
  stage "bundle" "MISSING: $msg"
else
  [ -s "$BUNDLE/BUILD_INFO" ] && tee -a "$RES/console.log" <"$BUNDLE/BUILD_INFO"
  # Binaries and libraries travel xz-compressed; unpacked together, the binaries' $ORIGIN
  # rpath finds the libraries too.
  for z in "$BUNDLE"/*.xz; do
    [ -e "$z" ] || continue
    f="$LIB/$(basename "${z%.xz}")"
    if command -v xz >/dev/null; then xz -dc "$z" >"$f"
    else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$z" "$f"
    fi || { bundle_ok=0; log "gpu_check: cannot unpack $z (needs xz or python3)"; }
    case "$(basename "$f")" in test_*|lethe_*|lethe) chmod +x "$f" ;; esac
  done
  # Open MPI for the two-rank runs (lethe_mpi), its layout kept under ompi/.
  if [ -f "$LIB/ompi.tar" ]; then
    if command -v tar >/dev/null; then tar -C "$LIB" -xf "$LIB/ompi.tar"
    else python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$LIB/ompi.tar" "$LIB"
    fi || log "gpu_check: cannot unpack ompi.tar (needs tar or python3): no two-rank runs"
    rm -f "$LIB/ompi.tar"
  fi
  # test_cuda_nccl loads libnccl.so.2 from this machine: without one it cannot start, which
  # says nothing about the bundle, so it is left out with the reason.
  if [ -z "$NCCL_DIR" ] && [[ " ${TESTS[*]} " == *" test_cuda_nccl "* ]]; then
    mapfile -t TESTS < <(printf '%s\n' "${TESTS[@]}" | grep -vx test_cuda_nccl)
    stage "test test_cuda_nccl" "NOT RUN: no libnccl.so.2 on this machine (a CUDA toolkit's or the nvidia-nccl wheel's)"
  fi
  # Every binary must start and list its tests here: a missing library shows now.
  for t in "${TESTS[@]}"; do
    if ! LD_LIBRARY_PATH="$LIB${NCCL_DIR:+:$NCCL_DIR}" timeout 30 "$LIB/$t" --gtest_list_tests >"$RES/list_$t.txt" 2>&1; then
      bundle_ok=0
      log "gpu_check: $t does not start: $(grep -m1 -iE 'error|not found' "$RES/list_$t.txt")"
    fi
  done
  if [ -x "$LIB/lethe" ] && ! LD_LIBRARY_PATH="$LIB" timeout 30 "$LIB/lethe" --version >"$WORK/start.txt" 2>&1; then
    bundle_ok=0
    log "gpu_check: lethe does not start: $(head -1 "$WORK/start.txt")"
  fi
  BENCHES=()
  for b in lethe_bench_gpu lethe_bench_attention; do  # an unknown flag: usage, once its libraries load
    [ -x "$LIB/$b" ] || continue
    BENCHES+=("$b")
    LD_LIBRARY_PATH="$LIB" timeout 30 "$LIB/$b" --check-start >"$WORK/start.txt" 2>&1
    if grep -q "error while loading" "$WORK/start.txt"; then
      bundle_ok=0
      log "gpu_check: $b does not start: $(head -1 "$WORK/start.txt")"
    fi
  done
  # Two ranks of lethe_mpi under the bundled Open MPI (no GPU needed): a failure here costs
  # only the two-rank stage, not the bundle.
  MPI_WHY="no lethe_mpi and Open MPI in the bundle (built where Open MPI is installed)"
  if [ -x "$LIB/lethe_mpi" ] && [ -f "$LIB/ompi/LAYOUT" ]; then
    OMPI="$LIB/ompi"
    ompi_libdir="$(sed -n 's/^libdir=//p' "$OMPI/LAYOUT")"
    pmix_lib="$(sed -n 's/^pmix_lib=//p' "$OMPI/LAYOUT")"
    # Relocated: OPAL_PREFIX for Open MPI, the component path for PMIx; the settings of
    # Debian's openmpi-mca-params.conf (no InfiniBand, UCX or libfabric transports), and no
    # configuration or hostfile of this machine's own MPI (a different version's).
    MPI_ENV=(env "OPAL_PREFIX=$OMPI" "PMIX_MCA_mca_base_component_path=$OMPI/$pmix_lib/pmix"
             "OMPI_MCA_mca_base_param_files=/dev/null" "PMIX_MCA_mca_base_param_files=/dev/null"
             "OMPI_MCA_orte_default_hostfile=/dev/null" "OMPI_MCA_btl_base_warn_component_unused=0"
             "OMPI_MCA_mtl=^ofi" "OMPI_MCA_btl=^uct,openib,ofi" "OMPI_MCA_pml=^ucx" "OMPI_MCA_osc=^ucx,pt2pt"
             "OMPI_ALLOW_RUN_AS_ROOT=1" "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1" "LETHE_PROGRESS=0"
             "LD_LIBRARY_PATH=$LIB:$OMPI/$ompi_libdir:$OMPI/$pmix_lib${LT_DIR:+:$LT_DIR}${NCCL_DIR:+:$NCCL_DIR}")
    if "${MPI_ENV[@]}" timeout 60 "$OMPI/bin/mpirun" -np 2 --oversubscribe "$LIB/lethe_mpi" --version \
         >"$RES/mpi_start.log" 2>&1 && [ "$(grep -c '^lethe ' "$RES/mpi_start.log")" -eq 2 ]; then
      MPI_WHY=""
      stage "mpi" "ok: two ranks of lethe_mpi under the bundled Open MPI"
    else
      MPI_WHY="the bundled Open MPI did not start two ranks: $(grep -m1 -iE 'error|not found|cannot' "$RES/mpi_start.log" | head -c 200)"
      [ -z "$NCCL_DIR" ] && grep -q "libnccl" "$RES/mpi_start.log" \
        && MPI_WHY="lethe_mpi links NCCL, and this machine has no libnccl.so.2 (a CUDA toolkit's or the nvidia-nccl wheel's)"
      stage "mpi" "FAILED: $MPI_WHY"
    fi
  fi
  if [ "$bundle_ok" -eq 1 ]; then
    stage "bundle" "ok: ${TESTS[*]} ${BENCHES[*]}$([ -x "$LIB/lethe" ] && echo " lethe")"
  else
    stage "bundle" "BROKEN: see console.log"
  fi
fi

# ---- the device -------------------------------------------------------------------------
say "device"
nogpu=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
  nogpu="nvidia-smi is not installed (no NVIDIA driver on this machine)"
elif ! timeout 30 nvidia-smi -L >"$RES/devices.txt" 2>&1 || ! grep -q "^GPU " "$RES/devices.txt"; then
  nogpu="nvidia-smi lists no device ($(head -1 "$RES/devices.txt"))"
fi
if [ -n "$nogpu" ]; then
  log "gpu_check: no GPU: $nogpu" >&2
  stage "device" "NONE: $nogpu"
  [ "$bundle_ok" -eq 1 ] && log "gpu_check: the bundle is complete and its binaries start; run this on a GPU machine"
  finish 2
fi
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
  | tee "$RES/device.csv" | tee -a "$RES/console.log"
DEVICE="$(head -1 "$RES/devices.txt")"
stage "device" "$DEVICE"
[ "$bundle_ok" -eq 1 ] || finish 3

if [ -n "$LT_DIR" ]; then
  stage "cuBLASLt" "$LT_DIR"
else
  stage "cuBLASLt" "NOT FOUND (libcublasLt.so.13): the GEMM tests fail, the step benchmark is skipped"
fi
[ -n "$NCCL_DIR" ] && stage "NCCL" "$NCCL_DIR"

# For lethe's binaries only (python3 and nvidia-smi keep the machine's own libraries).
# One seed for every GPU test of this check (LETHE_TEST_SEED, or drawn here), recorded in the
# summary: a test rerun alone below sees the inputs it failed on.
SEED="${LETHE_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
stage "test seed" "LETHE_TEST_SEED=$SEED"
LETHE_ENV=(env "LD_LIBRARY_PATH=$LIB${LT_DIR:+:$LT_DIR}${NCCL_DIR:+:$NCCL_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
           "OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}" "LETHE_TEST_SEED=$SEED")

# ---- tests: every test binary of the bundle --------------------------------------------
# Cheap ones first; the 7B-width block last. The tests get at most 240 s together.
order=(test_cuda_device test_cuda_numerics test_cuda_nccl test_cuda_ops test_cuda_model test_cuda_layer)
mapfile -t RUN < <({ for t in "${order[@]}"; do printf '%s\n' "$t"; done; printf '%s\n' "${TESTS[@]}"; } \
  | awk -v have=" ${TESTS[*]} " 'index(have, " " $0 " ") && !seen[$0]++')
tests_deadline=$(( SECONDS + 240 ))
declare -A RC RAN  # the check's verdict, and the binary's own exit status
for t in "${RUN[@]}"; do
  want=150
  case "$t" in test_cuda_device) want=30 ;; test_cuda_numerics|test_cuda_nccl) want=60 ;; esac
  s=$(cap "$want" "$tests_deadline")
  if (( s < 10 )); then stage "test $t" "NOT RUN: time budget spent"; fail; continue; fi
  say "$t (limit ${s} s)"
  t0=$SECONDS
  run "$s" "$RES/tests_$t.log" "${LETHE_ENV[@]}" "$LIB/$t" --gtest_output="json:$RES/tests_$t.json"
  rc=$?
  RC[$t]=$rc
  RAN[$t]=$rc
  st="exit $rc"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && st="TIMED OUT (limit ${s} s)"
  # On a machine with a GPU a skipped test means the binary could not use it (for
  # example a driver older than the CUDA 13 runtime in the bundle): a failure.
  if [ "$rc" -eq 0 ] && grep -q "^\[  SKIPPED \] [A-Z]" "$RES/tests_$t.log"; then
    st="SKIPPED tests although nvidia-smi sees a GPU: $(grep -m1 -iE 'no CUDA device|driver' "$RES/tests_$t.log" | head -c 200)"
    RC[$t]=1
  fi
  if [ "${RC[$t]}" -eq 0 ]; then st="ok"; else fail; fi
  stage "test $t" "$st ($(( SECONDS - t0 )) s)"
done

# A kernel fault poisons the CUDA context for every later test in the process: run each
# test of a failing binary alone, so the summary names those that fail by themselves.
alone_deadline=$(( SECONDS + 90 ))
for t in "${RUN[@]}"; do
  [ "${RAN[$t]:-0}" -ne 0 ] || continue
  [ -s "$RES/list_$t.txt" ] || continue
  say "each test of $t in its own process"
  mapfile -t names < <(awk '/^[^ ]/ {s=$1} /^  / {print s $1}' "$RES/list_$t.txt")
  out="$RES/isolated_$t.txt"
  : >"$out"
  for name in "${names[@]}"; do
    s=$(cap 60 "$alone_deadline")
    (( s < 10 )) && { log "(time budget spent: the rest not run alone)" >>"$out"; break; }
    if run "$s" "$WORK/alone.log" "${LETHE_ENV[@]}" "$LIB/$t" --gtest_filter="$name" >/dev/null; then
      echo "PASS $name" >>"$out"
    else
      { echo "FAIL $name"; grep -E "Failure|error|Error" "$WORK/alone.log" | head -5 | sed 's/^/     /'; } >>"$out"
    fi
  done
  tee -a "$RES/console.log" <"$out"
done

# ---- compute-sanitizer (GPU_CHECK_SANITIZE=1) --------------------------------------------
quick=(); [ -n "${GPU_CHECK_QUICK:-}" ] && quick=(--quick)
if [ -n "${GPU_CHECK_SANITIZE:-}" ]; then
  quick=(--quick)
  CS="$(command -v compute-sanitizer)"
  for c in ${CUDA_HOME:+"$CUDA_HOME/bin/compute-sanitizer"} /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
    [ -z "$CS" ] && [ -x "$c" ] && CS="$c"
  done
  if [ -z "$CS" ]; then
    stage "sanitizer" "SKIPPED: compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)"
  else
    # tool, binary, gtest filter, seconds wanted. Racecheck and synccheck only over the
    # attention kernels (the ones with shared-memory tiles and block barriers); the whole
    # model's step under memcheck is test_cuda_model.
    san_deadline=$(( SECONDS + 200 ))
    while read -r tool bin filter want; do
      [ -x "$LIB/$bin" ] || continue
      s=$(cap "$want" "$san_deadline")
      if (( s < 15 )); then stage "$tool $bin" "NOT RUN: time budget spent"; continue; fi
      say "compute-sanitizer $tool: $bin $filter (limit ${s} s)"
      t0=$SECONDS
      slog="$RES/sanitize_${tool}_$bin.log"
      run "$s" "$slog" "${LETHE_ENV[@]}" "$CS" --tool "$tool" --error-exitcode 99 --print-limit 20 \
        "$LIB/$bin" --gtest_filter="$filter"
      rc=$?
      found="$(grep -E '(ERROR|RACECHECK|SYNCCHECK) SUMMARY' "$slog" | tail -1 | sed 's/^=* *//')"
      case "$rc" in
        0) st="ok: ${found:-no errors}" ;;
        99) st="ERRORS: $found"; fail ;;
        124|137) st="TIMED OUT (limit ${s} s): incomplete" ;;
        *) st="exit $rc (the tests failed under the sanitizer): ${found:-see its log}"; fail ;;
      esac
      stage "$tool $bin" "$st ($(( SECONDS - t0 )) s)"
    done <<'EOF'
memcheck test_cuda_ops CudaOps.* 100
memcheck test_cuda_numerics * 30
memcheck test_cuda_model * 60
racecheck test_cuda_ops CudaOps.*Attention* 90
synccheck test_cuda_ops CudaOps.*Attention* 60
EOF
  fi
fi

# Tests that ran long (a hang cut by its limit, reruns) leave the full benchmarks too little
# time to finish both sides of a comparison: switch to the quick cases.
if [ ${#quick[@]} -eq 0 ] && (( SECONDS > 200 )); then
  quick=(--quick)
  stage "benchmarks" "quick cases: the tests used ${SECONDS} s of ${TOTAL} s"
fi

# ---- the command: lethe unlearn on the GPU and on the CPU's bf16 emulation ----------------
# The product's own path (loading, every step's terms and AdamW, the evaluations, the MIA
# suite, verbatim memorisation, checkpoints, the report) on the device, next to the same
# run emulated on the CPU. A short fixed run (no stop rules) so both take the same steps;
# tools/bench/unlearn_compare.py sets their numbers side by side. The difference is
# measured, not judged (training amplifies rounding-order differences); the stage fails
# when a run fails or leaves a non-finite number.
UNLEARN=("$ROOT/configs/recipes/ga_gd.yaml" train.steps=20 eval.every=10 stop.forget_reaches_holdout=false
         stop.retain_ppl_ratio=0 eval.mia_max_docs=12 eval.final_max_sequences=256 train.precision=bf16)
if [ ! -x "$LIB/lethe" ]; then
  stage "unlearn cuda vs emulation" "SKIPPED: no lethe in the bundle (rebuild it with tools/gpu_bundle.sh)"
elif [ -z "$LT_DIR" ]; then
  stage "unlearn cuda vs emulation" "SKIPPED: no libcublasLt.so.13 on this machine"
else
  s=$(cap 90)
  if (( s < 40 )); then
    stage "unlearn cuda vs emulation" "NOT RUN: time budget spent"
  else
    say "lethe unlearn on cuda, then on the CPU's bf16 emulation (limit ${s} s)"
    t0=$SECONDS
    run $(( s * 2 / 3 )) "$RES/unlearn_cuda.log" "${LETHE_ENV[@]}" LETHE_UNVERIFIED_CUDA=1 "$LIB/lethe" unlearn \
      "${UNLEARN[@]}" train.device=cuda output.dir="$WORK/unlearn_cuda"
    rc_dev=$?
    run $(( s - (SECONDS - t0) > 10 ? s - (SECONDS - t0) : 10 )) "$RES/unlearn_emulation.log" "${LETHE_ENV[@]}" \
      "$LIB/lethe" unlearn "${UNLEARN[@]}" train.device=cpu output.dir="$WORK/unlearn_emulation"
    rc_emu=$?
    for r in cuda emulation; do
      cp "$WORK/unlearn_$r/report.md" "$RES/unlearn_${r}_report.md" 2>/dev/null
      cp "$WORK/unlearn_$r/metrics.jsonl" "$RES/unlearn_${r}_metrics.jsonl" 2>/dev/null
    done
    if [ "$rc_dev" -ne 0 ]; then
      st="FAILED on cuda: exit $rc_dev: $(grep -m1 -iE 'error' "$RES/unlearn_cuda.log" | head -c 200)"; fail
    elif [ "$rc_emu" -ne 0 ]; then
      st="FAILED on the emulation: exit $rc_emu: $(grep -m1 -iE 'error' "$RES/unlearn_emulation.log" | head -c 200)"; fail
    elif ! command -v python3 >/dev/null 2>&1; then
      st="ok (both ran; python3 not found, so no comparison)"
    elif timeout 30 python3 "$ROOT/tools/bench/unlearn_compare.py" "$WORK/unlearn_emulation" "$WORK/unlearn_cuda" \
         --json "$RES/unlearn_compare.json" >"$RES/unlearn_compare.txt" 2>&1; then
      st="ok: $(tail -1 "$RES/unlearn_compare.txt")"
    else
      st="FAILED: $(grep -m1 'unlearn_compare' "$RES/unlearn_compare.txt" | head -c 200)"; fail
    fi
    stage "unlearn cuda vs emulation" "$st ($(( SECONDS - t0 )) s)"
  fi
fi

# ---- two ranks: tensor and data parallelism ---------------------------------------------
# The same run at tp=2 and at dp=2 with two ranks. On one GPU they share it and their
# collectives go through the host-staged communicator (NCCL refuses two ranks on one
# device); where the machine has two GPUs each rank takes one and NCCL serves them.
# Each is set beside the one-process GPU run above, which it should match up to rounding
# order (measured, not judged, as above).
for layout in tp dp; do
  name="unlearn ${layout}=2, two ranks"
  if [ -n "$MPI_WHY" ]; then stage "$name" "SKIPPED: $MPI_WHY"; continue; fi
  if [ ! -s "$WORK/unlearn_cuda/report.json" ]; then
    stage "$name" "SKIPPED: no one-process GPU run to compare with"; continue
  fi
  s=$(cap 60)
  if (( s < 30 )); then stage "$name" "NOT RUN: time budget spent"; continue; fi
  say "$name: mpirun -np 2 lethe_mpi unlearn parallel.${layout}=2 (limit ${s} s)"
  t0=$SECONDS
  out="$WORK/unlearn_${layout}2"
  run "$s" "$RES/unlearn_${layout}2.log" "${MPI_ENV[@]}" LETHE_UNVERIFIED_CUDA=1 "LETHE_TEST_SEED=$SEED" \
    "OMP_NUM_THREADS=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))" \
    "$OMPI/bin/mpirun" -np 2 --oversubscribe "$LIB/lethe_mpi" unlearn "${UNLEARN[@]}" train.device=cuda \
    "parallel.${layout}=2" output.dir="$out"
  rc=$?
  cp "$out/metrics.jsonl" "$RES/unlearn_${layout}2_metrics.jsonl" 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    st="FAILED: exit $rc: $(grep -m1 -iE 'error' "$RES/unlearn_${layout}2.log" | head -c 200)"; fail
  elif ! command -v python3 >/dev/null 2>&1; then
    st="ok (ran; python3 not found, so no comparison)"
  elif timeout 30 python3 "$ROOT/tools/bench/unlearn_compare.py" "$WORK/unlearn_cuda" "$out" \
       --names "1 process,${layout}=2" --json "$RES/unlearn_${layout}2_compare.json" \
       >"$RES/unlearn_${layout}2_compare.txt" 2>&1; then
    st="ok: $(tail -1 "$RES/unlearn_${layout}2_compare.txt")"
  else
    st="FAILED: $(grep -m1 'unlearn_compare' "$RES/unlearn_${layout}2_compare.txt" | head -c 200)"; fail
  fi
  # Which communicator served the ranks' device tensors (grid.cpp says on rank 0).
  comm="host-staged"
  grep -q "run on NCCL" "$RES/unlearn_${layout}2.log" && comm="NCCL"
  stage "$name" "$st; collectives: $comm ($(( SECONDS - t0 )) s)"
done

# ---- benchmarks -------------------------------------------------------------------------
# Attention first: both of its stages are short and bounded, where the transformers step
# takes whatever is left. The python peers run with the machine's own libraries.

# The machine has no network: a stray hub lookup must fail at once, not wait out the stage.
PY_OFFLINE=(HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
            PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)
# Whether python3 imports the modules named and torch sees a GPU; if not, why in PEER_WHY.
peer_ready() {
  local log=$1 s
  shift
  PEER_WHY=""
  if ! command -v python3 >/dev/null 2>&1; then PEER_WHY="SKIPPED: python3 not found"; return 1; fi
  s=$(cap 60)
  if (( s < 15 )); then PEER_WHY="NOT RUN: time budget spent"; return 1; fi
  if ! run "$s" "$log" env "${PY_OFFLINE[@]}" python3 -c "import $*
import torch
assert torch.cuda.is_available(), 'torch.cuda.is_available() is False (torch ' + torch.__version__ + ')'"; then
    PEER_WHY="SKIPPED: import failed: $(grep -v '^\s*$' "$log" | tail -1 | head -c 300)"
    return 1
  fi
}
# bench NAME WANT LOG COMMAND...: a lethe benchmark as a stage; a failure fails the check.
bench() {
  local name=$1 want=$2 log=$3 s rc st dev t0
  shift 3
  s=$(cap "$want")
  if (( s < 20 )); then stage "$name" "NOT RUN: time budget spent"; return; fi
  say "$name (limit ${s} s)"
  t0=$SECONDS
  run "$s" "$log" "${LETHE_ENV[@]}" "$@"
  rc=$?
  case "$rc" in
    0) st="ok" ;;
    124|137) st="TIMED OUT (limit ${s} s; what was measured is in the tables)"; fail ;;
    *) st="FAILED: exit $rc: $(grep -m1 -iE 'error|fail|lethe_bench_[a-z]*:' "$log" | head -c 200)"; fail ;;
  esac
  dev="$(grep -m1 '^device ' "$log")"
  stage "$name" "$st${dev:+; $dev} ($(( SECONDS - t0 )) s)"
}
# peer NAME WANT LOG COMMAND...: a python peer as a stage; its failure leaves no ratio but
# fails nothing.
peer() {
  local name=$1 want=$2 log=$3 s rc st t0
  shift 3
  s=$(cap "$want")
  if (( s < 30 )); then stage "$name" "NOT RUN: time budget spent"; return; fi
  say "$name (limit ${s} s)"
  t0=$SECONDS
  run "$s" "$log" env PYTHONUNBUFFERED=1 "${PY_OFFLINE[@]}" "$@"
  rc=$?
  case "$rc" in
    0) st="ok" ;;
    124|137) st="TIMED OUT (limit ${s} s): no comparison for the rest" ;;
    *) st="FAILED: exit $rc: $(grep -v '^\s*$' "$log" | tail -1 | head -c 200)" ;;
  esac
  stage "$name" "$st ($(( SECONDS - t0 )) s)"
}

# Attention alone needs no cuBLASLt (no matrix product outside its kernels).
if [ ! -x "$LIB/lethe_bench_attention" ]; then
  stage "benchmark attention lethe" "SKIPPED: no lethe_bench_attention in the bundle"
else
  bench "benchmark attention lethe" "$([ ${#quick[@]} -gt 0 ] && echo 40 || echo 75)" "$RES/bench_attention.log" \
    "$LIB/lethe_bench_attention" "${quick[@]}" --json "$RES/bench_attention.json"
  if peer_ready "$RES/torch_import.log" torch; then
    peer "benchmark attention SDPA flash" "$([ ${#quick[@]} -gt 0 ] && echo 45 || echo 75)" \
      "$RES/sdpa_attention.log" python3 "$ROOT/tools/bench/torch_attention.py" "${quick[@]}" \
      --json "$RES/sdpa_attention.json"
  else
    stage "benchmark attention SDPA flash" "$PEER_WHY"
  fi
fi

if [ ! -x "$LIB/lethe_bench_gpu" ]; then
  stage "benchmark step lethe" "SKIPPED: no lethe_bench_gpu in the bundle"
elif [ -z "$LT_DIR" ]; then
  stage "benchmark step lethe" "SKIPPED: no libcublasLt.so.13 on this machine"
else
  bench "benchmark step lethe" "$([ ${#quick[@]} -gt 0 ] && echo 90 || echo 150)" "$RES/bench_lethe.log" \
    "$LIB/lethe_bench_gpu" "${quick[@]}" --json "$RES/bench_lethe.json"
  # The same step in transformers, on the cases and layer counts lethe ran.
  if peer_ready "$RES/transformers_import.log" torch, transformers; then
    match=(); [ -s "$RES/bench_lethe.json" ] && match=(--match "$RES/bench_lethe.json")
    peer "benchmark step transformers" 200 "$RES/bench_torch.log" python3 "$ROOT/tools/bench/torch_gpu_step.py" \
      "${quick[@]}" "${match[@]}" --json "$RES/bench_torch.json"
  else
    stage "benchmark step transformers" "$PEER_WHY"
  fi
fi

finish "$FAILED"
