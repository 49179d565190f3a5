#!/usr/bin/env bash
# Sourced by train_entities.sh and seeds.sh (with root and bin set): where each seed's model
# pair lives, and how it is trained. The default pair (train.seed 20261, the seed in
# configs/train/entity-lm-*.yaml) is models/entities; another seed S is
# models/entities/seed-S.
#   entities_pair_dir SEED           prints the pair's directory
#   entities_train_pair PAIR SEED    trains entity-lm and its exact retrain oracle from
#                                    train.seed SEED into PAIR/{full,oracle} (an interrupted
#                                    training resumes) and exports PAIR/{full,oracle}-hf; a
#                                    model already exported is kept
entities_pair_dir() {
  if [ "$1" = 20261 ]; then echo "$root/models/entities"; else echo "$root/models/entities/seed-$1"; fi
}
entities_train_pair() {
  local pair="$1" seed="$2" which resume
  for which in full oracle; do
    [ -d "$pair/$which-hf" ] && continue
    resume=false
    [ -d "$pair/$which" ] && resume=true
    "$bin" train "$root/configs/train/entity-lm-$which.yaml" train.seed="$seed" checkpoint.dir="$pair/$which" \
      train.resume=$resume
    rm -rf "$pair/$which-hf.new"
    "$bin" convert lethe-to-hf "$pair/$which" "$pair/$which-hf.new" dtype=f32
    mv "$pair/$which-hf.new" "$pair/$which-hf"
  done
}
