#!/usr/bin/env bash
# `make entities`: builds the fictitious-entity benchmark and trains entity-lm and its exact
# retrain oracle on it (tools/benchmarks/entities/README.md).
#   1. make_entities.py writes data/benchmarks/entities/{docs,qa} (under 1 s);
#   2. tools/tokenize turns each split into a byte-token file under
#      data/benchmarks/entities/tokens/ (the general stream is data/tokens/{papers,code});
#   3. trains configs/train/entity-lm-{full,oracle}.yaml into models/entities/{full,oracle}
#      (resumed if interrupted) and exports each as a transformers checkpoint (f32
#      safetensors) to models/entities/{full,oracle}-hf, which the recipes in
#      configs/recipes/entities/ read.
# A pair trained on other documents (an older version of the benchmark) is removed and
# retrained (data_stamp.sh); models/entities/DATA_SHA256 records what the pair saw.
# About 25 minutes on 2 cores (two trainings of about 12 minutes).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
bench="$root/data/benchmarks/entities"
source "$root/tools/benchmarks/entities/data_stamp.sh"
python3 "$root/tools/benchmarks/entities/make_entities.py" --out "$bench"
stamp="$(entities_data_stamp "$bench")"
entities_check_pair "$root/models/entities" "$stamp"
[ -f "$root/data/tokens/papers/general.h5" ] || bash "$root/tools/data/build_tokens.sh"
for split in forget retain holdout; do
  python3 "$root/tools/tokenize" "$bench/docs/$split.jsonl" --out "$bench/tokens/$split.h5" \
    --source "data/benchmarks/entities/docs/$split.jsonl"
done
for which in full oracle; do
  run="$root/models/entities/$which"
  resume=false
  [ -d "$run" ] && resume=true
  "$bin" train "$root/configs/train/entity-lm-$which.yaml" train.resume=$resume
  out="$root/models/entities/$which-hf"
  rm -rf "$out.new"
  "$bin" convert lethe-to-hf "$run" "$out.new" dtype=f32
  rm -rf "$out"
  mv "$out.new" "$out"
done
echo "entities: models/entities/full-hf and models/entities/oracle-hf"
