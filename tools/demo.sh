#!/usr/bin/env bash
# `make demo`: the end-to-end jobs that exist today, in about a minute on 2 cores.
#  1. train the tiny byte-level model on a short text (step, loss, tokens/s), with a
#     checkpoint;
#  2. import the pretrained benchmark model tiny-lm and its retrain oracle (transformers
#     safetensors in data/models) and measure what unlearning has to do: the full model
#     knows the forget documents better than unseen holdout documents; the oracle, which
#     never saw them, does not.
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
printf '%-18s %-8s %10s %12s %8s\n' model split "nll/byte" perplexity top1
for m in full oracle; do
  for split in forget holdout; do
    line="$("$bin" eval "$work/tiny-lm-$m" "$root/data/tokens/books/$split.h5" seq_len=128 batch=16 \
            max_sequences=256 | tail -1)"
    nll="$(sed -n 's/.*nll \([0-9.]*\).*/\1/p' <<<"$line")"
    ppl="$(sed -n 's/.*perplexity \([0-9.]*\).*/\1/p' <<<"$line")"
    top1="$(sed -n 's/.*top1 \([0-9.]*\).*/\1/p' <<<"$line")"
    printf '%-18s %-8s %10s %12s %8s\n' "tiny-lm-$m" "$split" "$nll" "$ppl" "$top1"
  done
done
echo
echo "The gap between forget and holdout for tiny-lm-full, absent for the oracle, is what"
echo "unlearning must remove (membership inference reads it); see docs/data.md."
