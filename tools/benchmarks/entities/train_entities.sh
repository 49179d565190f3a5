#!/usr/bin/env bash
# `make entities`: builds the fictitious-entity benchmark and trains entity-lm and its exact
# retrain oracle on it, for each of three seeds of the pair (tools/benchmarks/entities/README.md).
#   1. make_entities.py writes data/benchmarks/entities/{docs,qa} (under 1 s);
#   2. tools/tokenize turns each split into a byte-token file under
#      data/benchmarks/entities/tokens/ (the general stream is data/tokens/{papers,code});
#   3. trains configs/train/entity-lm-{full,oracle}.yaml into models/entities/{full,oracle}
#      (resumed if interrupted) and exports each as a transformers checkpoint (f32
#      safetensors) to models/entities/{full,oracle}-hf, which the recipes in
#      configs/recipes/entities/ read; then the same from train.seed 20262 and 20263 into
#      models/entities/seed-S/ (ENTITY_SEEDS="20261" trains the default pair only), the
#      pairs over which `make results` reports the spread (seeds.sh).
# A pair trained on other documents (an older version of the benchmark) is removed and
# retrained (data_stamp.sh); each pair's DATA_SHA256 records what it saw. An exported model
# is kept. About 6 minutes per model on a 2-core AMD EPYC, 12 on a 2-core Xeon: 35 to 70
# minutes for the three pairs.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
bench="$root/data/benchmarks/entities"
source "$root/tools/benchmarks/entities/data_stamp.sh"
source "$root/tools/benchmarks/entities/pair.sh"
python3 "$root/tools/benchmarks/entities/make_entities.py" --out "$bench"
stamp="$(entities_data_stamp "$bench")"
[ -f "$root/data/tokens/papers/general.h5" ] || bash "$root/tools/data/build_tokens.sh"
for split in forget retain holdout; do
  python3 "$root/tools/tokenize" "$bench/docs/$split.jsonl" --out "$bench/tokens/$split.h5" \
    --source "data/benchmarks/entities/docs/$split.jsonl"
done
for seed in ${ENTITY_SEEDS:-20261 20262 20263}; do
  pair="$(entities_pair_dir "$seed")"
  entities_check_pair "$pair" "$stamp"
  entities_train_pair "$pair" "$seed"
done
echo "entities: models/entities/{full,oracle}-hf and models/entities/seed-*/{full,oracle}-hf"
