#!/usr/bin/env bash
# expect_abort.sh MAX_SECONDS PATTERN COMMAND...: passes when COMMAND exits non-zero within
# MAX_SECONDS and its output matches PATTERN (grep -E).
set -u
max=$1 pattern=$2
shift 2
out=$(mktemp)
start=$(date +%s)
timeout -k 5 "$((max + 10))" "$@" >"$out" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
cat "$out"
echo "exit code $rc after ${elapsed}s"
ok=1
if [ "$rc" -eq 0 ]; then echo "FAIL: expected a non-zero exit"; ok=0; fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "FAIL: the job hung"; ok=0; fi
if [ "$elapsed" -gt "$max" ]; then echo "FAIL: took ${elapsed}s, limit ${max}s"; ok=0; fi
if ! grep -Eq "$pattern" "$out"; then echo "FAIL: output lacks /$pattern/"; ok=0; fi
rm -f "$out"
[ "$ok" -eq 1 ]
