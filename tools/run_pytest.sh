#!/usr/bin/env bash
# Runs the Python tests under CTest; exits 77 (CTest's "skipped") when the Python modules
# they need are absent, so a machine without them still passes `make test`.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pytest, h5py, numpy, tokenizers" 2>/dev/null; then
  echo "skipping Python tests: need pytest, h5py, numpy, tokenizers (pip install pytest h5py numpy tokenizers)"
  exit 77
fi
exec python3 -m pytest -q -p no:cacheprovider "$@"
