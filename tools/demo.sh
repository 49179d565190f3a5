#!/usr/bin/env bash
# `make demo`: the end-to-end jobs that exist today, in about a minute on 2 cores.
#  1. train the tiny byte-level model on a short text (step, loss, tokens/s), with a
#     checkpoint;
#  2. import the pretrained benchmark model tiny-lm and its retrain oracle (transformers
#     safetensors in data/models) and measure what unlearning has to do: the full model
#     knows the forget documents better than the oracle, which never saw them;
#  3. unlearn the books forget split from tiny-lm with the GA+GD recipe and print the
#     report's before/after table next to the oracle;
#  4. when SmolLM2-135M was fetched (make smollm2) and Python has `tokenizers`: tokenise
#     the books splits with its tokenizer, run a short GA+GD on it, and print its
#     before/after perplexities and one forget-document continuation before and after.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${LETHE_BIN:-$root/build/lethe}"
work="$root/build/demo"
rm -rf "$work"
mkdir -p "$work"

echo "== 1. lethe train configs/train/demo.yaml"
"$bin" train "$root/configs/train/demo.yaml" checkpoint.dir="$work/demo-run"

echo
echo "== 2. forget vs holdout NLL of tiny-lm and its retrain oracle (books domain)"
for m in full oracle; do
  "$bin" convert hf-to-lethe "$root/data/models/tiny-lm-$m" "$work/tiny-lm-$m" >/dev/null
done
# NLL (nats per byte) of the full model and of the oracle on each split; "memorised" is
# oracle minus full: what the full model gained from having trained on the documents.
printf '%-8s %12s %12s %11s\n' split "full nll" "oracle nll" memorised
for split in forget holdout; do
  nll() {
    "$bin" eval "$work/tiny-lm-$1" "$root/data/tokens/books/$split.h5" seq_len=128 batch=16 | tail -1 |
      sed -n 's/.*nll \([0-9.]*\).*/\1/p'
  }
  full="$(nll full)"
  oracle="$(nll oracle)"
  printf '%-8s %12s %12s %11s\n' "$split" "$full" "$oracle" "$(awk -v a="$oracle" -v b="$full" 'BEGIN{printf "%+.4f", a-b}')"
done
echo
echo "tiny-lm-full trained on the forget documents and knows them better than the oracle,"
echo "which never saw them; on unseen holdout documents the two agree. Unlearning must"
echo "remove the forget gap without opening one elsewhere (docs/data.md)."

echo
echo "== 3. lethe unlearn configs/recipes/ga_gd.yaml (GA+GD on tiny-lm, books forget split)"
"$bin" unlearn "$root/configs/recipes/ga_gd.yaml" output.dir="$work/unlearn-ga_gd" eval.mia_max_docs=12 \
  eval.final_max_sequences=256
echo
sed -n '/^| split/,/^$/p' "$work/unlearn-ga_gd/report.md"
sed -n '/^| attack/,/^$/p' "$work/unlearn-ga_gd/report.md" | grep -E '^\|(---| (attack|loss|zlib|min_k_20|min_k_pp_20|reference) )'
echo "Report: $work/unlearn-ga_gd/report.md, curves: $work/unlearn-ga_gd/curves.svg"

echo
smol="$root/models/smollm2-135m-instruct"
if [ ! -f "$smol/COMPLETE" ]; then
  echo "== 4. skipped: SmolLM2-135M not fetched (make smollm2 fetches and converts it)"
  exit 0
fi
if ! python3 -c "import tokenizers, h5py, numpy" 2>/dev/null; then
  echo "== 4. skipped: SmolLM2 needs Python's tokenizers, h5py, numpy to tokenise the data"
  echo "   (pip install tokenizers h5py numpy)"
  exit 0
fi
echo "== 4. SmolLM2-135M-Instruct: GA+GD on the books forget split (its own tokenizer)"
d="$work/smollm2"
mkdir -p "$d"
python3 "$root/tools/models/hf_tokenizer.py" "$smol" --out "$d/tokenizer.json"
for split in forget retain holdout; do
  python3 "$root/tools/tokenize" "$root/data/corpora/books/$split.jsonl" --out "$d/$split.h5" \
    --tokenizer "$d/tokenizer.json" --source "books/$split" >/dev/null
done
echo "-- before: forget document 0, greedy continuation"
"$bin" generate "$smol" "$d/forget.h5" doc=0 prefix=32 tokens=24
"$bin" unlearn "$root/configs/demo/smollm2_ga_gd.yaml" model="$smol" data.forget="$d/forget.h5" \
  data.retain="$d/retain.h5" data.holdout="$d/holdout.h5" output.dir="$d/unlearn"
echo "-- after: the same prefix"
"$bin" generate "$d/unlearn/final" "$d/forget.h5" doc=0 prefix=32 tokens=24
echo
sed -n '/^| split/,/^$/p' "$d/unlearn/report.md"
echo "Report: $d/unlearn/report.md"
