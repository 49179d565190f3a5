#!/usr/bin/env bash
# `make models`: pretrains tiny-lm and its exact retrain oracle on the embedded corpora,
# then exports both as transformers checkpoints (f32 safetensors) under data/models/.
# Each run checkpoints into models/tiny-lm/ and resumes if interrupted. Then the
# cross-domain task's oracle (tiny-lm without any code, configs/train/tiny-lm-oracle-nocode.yaml),
# exported to models/tiny-lm/oracle-nocode-hf (not committed: only its recipes read it).
# About 25 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
[ -f "$root/data/tokens/books/forget.h5" ] || bash "$root/tools/data/build_tokens.sh"
for which in full oracle; do
  run="$root/models/tiny-lm/$which"
  resume=false
  [ -d "$run" ] && resume=true
  "$bin" train "$root/configs/train/tiny-lm-$which.yaml" train.resume=$resume
  out="$root/data/models/tiny-lm-$which"
  rm -rf "$out.new"
  "$bin" convert lethe-to-hf "$run" "$out.new" dtype=f32
  rm -rf "$out"
  mv "$out.new" "$out"
done
run="$root/models/tiny-lm/oracle-nocode"
resume=false
[ -d "$run" ] && resume=true
"$bin" train "$root/configs/train/tiny-lm-oracle-nocode.yaml" train.resume=$resume
rm -rf "$run-hf.new"
"$bin" convert lethe-to-hf "$run" "$run-hf.new" dtype=f32
rm -rf "$run-hf"
mv "$run-hf.new" "$run-hf"
echo "tiny-lm: data/models/tiny-lm-full, data/models/tiny-lm-oracle and models/tiny-lm/oracle-nocode-hf"
