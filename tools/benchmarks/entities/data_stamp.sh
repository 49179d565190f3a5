#!/usr/bin/env bash
# Sourced by train_entities.sh and seeds.sh: a model pair is only as good as the data it was
# trained on, and `lethe train` resumes a run by its settings and file names, not the files'
# contents. Each pair directory keeps the SHA-256 of the documents it was trained on
# (DATA_SHA256); a pair trained on other data, or on data of unknown version, is removed
# so that it is retrained rather than silently reused. The stamp is written before training
# starts, so an interrupted training on the same data still resumes.
#   entities_data_stamp BENCH_DIR          prints the stamp of the current documents
#   entities_check_pair PAIR_DIR STAMP     removes PAIR_DIR's models if their stamp differs,
#                                          then records STAMP
entities_data_stamp() {
  (cd "$1/docs" && sha256sum forget.jsonl retain.jsonl holdout.jsonl) | sha256sum | cut -c1-64
}
entities_check_pair() {
  local pair="$1" stamp="$2" have=""
  [ -f "$pair/DATA_SHA256" ] && have="$(cat "$pair/DATA_SHA256")"
  [ "$have" = "$stamp" ] && return 0
  local stale=()
  for which in full oracle full-hf oracle-hf; do [ -e "$pair/$which" ] && stale+=("$pair/$which"); done
  if [ ${#stale[@]} -gt 0 ]; then
    echo "entities: ${stale[*]} were trained on other documents than data/benchmarks/entities/docs" \
      "(stamp ${have:-missing}, now $stamp): removing them to retrain" >&2
    rm -rf "${stale[@]}"
  fi
  mkdir -p "$pair"
  echo "$stamp" > "$pair/DATA_SHA256"
}
