#!/usr/bin/env bash
# Tokenizes every split of every embedded corpus into an HDF5 token dataset
# (docs/formats.md): data/corpora/<domain>/<split>.jsonl -> <out>/<domain>/<split>.h5
#
#   tools/data/build_tokens.sh                         byte tokens into data/tokens/
#   tools/data/build_tokens.sh --out-dir DIR           somewhere else
#   tools/data/build_tokens.sh --out-dir DIR -- --tokenizer PATH/tokenizer.json --add-bos
#                                                      anything after -- goes to tools/tokenize
#
# The outputs are not committed (about 4 bytes per byte of text); rebuild them with this
# script. Needs python3 with numpy and h5py (and tokenizers for a tokenizer.json).
set -euo pipefail
cd "$(dirname "$0")/../.."

out_dir=data/tokens
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out-dir) out_dir="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build_tokens: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! python3 -c 'import numpy, h5py' 2>/dev/null; then
  echo "build_tokens: python3 needs numpy and h5py: pip install numpy h5py" >&2
  exit 1
fi

for domain in books code papers; do
  for split in forget holdout retain general; do
    in="data/corpora/$domain/$split.jsonl"
    if [ ! -f "$in" ]; then
      echo "build_tokens: missing $in (rebuild with tools/data/build_corpora.py)" >&2
      exit 1
    fi
    python3 tools/tokenize "$in" --out "$out_dir/$domain/$split.h5" --source "$in" ${extra[@]+"${extra[@]}"}
  done
done
echo "build_tokens: wrote $out_dir/{books,code,papers}/{forget,holdout,retain,general}.h5" >&2
