#!/usr/bin/env bash
# An installed lethe and one outside its source tree find their presets: installs BUILD
# into a temporary prefix, then runs `lethe plan llama2-7b`, `lethe version` and the Plan
# tests (tests/plan/test_plan) against
#   1. PREFIX/bin/lethe (presets from PREFIX/share/lethe/configs), and
#   2. the built binary copied to a directory outside the tree (as a build directory
#      anywhere on disk: presets from the source tree it was built from),
# each from a working directory outside the source tree.
#   bash tools/check_install.sh BUILD_DIR
set -euo pipefail
build="$(cd "${1:?usage: check_install.sh BUILD_DIR}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; exit 1; }
mkdir -p "$work/elsewhere/bin" "$work/cwd"
cp "$build/lethe" "$work/elsewhere/bin/lethe"
cd "$work/cwd"

fail=0
check() {  # label, binary, expected presets directory
  local label="$1" bin="$2" presets="$3"
  if ! out="$("$bin" plan llama2-7b --tp 2 --dp 4 2>&1)"; then
    echo "FAIL $label: lethe plan llama2-7b: $out"; fail=1
  fi
  if ! "$bin" version | grep -qF "model presets: $presets"; then
    echo "FAIL $label: lethe version does not name $presets:"; "$bin" version; fail=1
  fi
  if ! LETHE_TEST_BIN="$bin" "$build/tests/plan/test_plan" --gtest_filter='Plan.*' >"$work/plan.log" 2>&1; then
    echo "FAIL $label: Plan tests"; grep -E "Failure|FAILED|error" "$work/plan.log" | head -20; fail=1
  else
    echo "ok   $label: lethe plan llama2-7b, presets from $presets, $(grep -c '^\[       OK \]' "$work/plan.log") Plan tests"
  fi
}
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
check "installed prefix" "$prefix/bin/lethe" "$prefix/share/lethe/configs/models"
check "outside the tree" "$work/elsewhere/bin/lethe" "$src/configs/models"
for f in share/lethe/launch/lethe-run.sh share/lethe/configs/recipes/ga_gd.yaml share/doc/lethe/README.md; do
  [ -e "$prefix/$f" ] || { echo "FAIL installed prefix: $f missing"; fail=1; }
done
exit $fail
