#include "engine/eval/nll.h"

#include <algorithm>
#include <cmath>

#include "engine/data/sequence_sampler.h"
#include "kernels/cross_entropy.h"

namespace lethe {

double NllResult::perplexity() const { return std::exp(mean_nll()); }

NllResult evaluate_nll(LlamaModel& model, const TokenDataset& ds, int64_t seq_len, int64_t batch_size,
                       int64_t max_sequences) {
  LETHE_CHECK(batch_size >= 1, "eval: batch size must be >= 1");
  SamplerConfig sc;
  sc.seq_len = seq_len;
  sc.shuffle = false;
  const SequenceSampler s(ds, sc);
  const int64_t n = max_sequences > 0 ? std::min(max_sequences, s.n_sequences()) : s.n_sequences();
  const int64_t V = model.config().vocab_size;
  NllResult r;
  for (int64_t i0 = 0; i0 < n; i0 += batch_size) {
    const int64_t B = std::min(batch_size, n - i0);
    Tensor tok = Tensor::empty({B, seq_len}, DType::i32), tgt = Tensor::empty({B, seq_len}, DType::i32);
    for (int64_t b = 0; b < B; ++b)
      s.sequence(i0 + b, tok.data<int32_t>() + b * seq_len, tgt.data<int32_t>() + b * seq_len);
    // Weight 1 per token: the returned loss is the summed NLL of the batch.
    Tensor w = Tensor::empty({B, seq_len}, DType::f64);
    std::fill(w.data<double>(), w.data<double>() + w.numel(), 1.0);
    const double batch_nll = model.forward(tok, tgt, &w);
    const Tensor& logits = model.logits();
    const Tensor& lp = model.logprobs();
    const int32_t* t = tgt.data<int32_t>();
    double local_nll = 0;
    for (int64_t b = 0; b < B; ++b) {
      double sum = 0;
      int64_t k = 0;
      for (int64_t j = b * seq_len; j < (b + 1) * seq_len; ++j)
        if (t[j] != ops::kIgnoreIndex) {
          sum -= lp.dtype() == DType::f32 ? double(lp.data<float>()[j]) : lp.data<double>()[j];
          ++k;
        }
      if (k) r.sequence_nll.push_back(sum / double(k));
      local_nll += sum;
    }
    // On a grid every dp rank evaluates the same sequences, and forward sums its loss over
    // dp: the rank's own log-probs give the batch's NLL once.
    r.nll_sum += model.grid().dp() > 1 ? local_nll : batch_nll;
    // Under tp each rank holds a slice of the vocabulary: the argmax is taken across them.
    Tensor tp_best;
    if (model.tp_layout().tp > 1) {
      tp_best = Tensor::empty({B * seq_len}, DType::i32);
      vocab_parallel_argmax(logits, model.vocab_shard(), tp_best, model.grid().tp_group());
    }
    for (int64_t k = 0; k < B * seq_len; ++k) {
      if (t[k] == ops::kIgnoreIndex) continue;
      ++r.tokens;
      int64_t best = 0;
      if (tp_best.defined()) {
        best = tp_best.data<int32_t>()[k];
      } else if (logits.dtype() == DType::f32) {
        const float* row = logits.data<float>() + k * V;
        best = std::max_element(row, row + V) - row;
      } else {
        const double* row = logits.data<double>() + k * V;
        best = std::max_element(row, row + V) - row;
      }
      r.correct += best == t[k];
    }
    r.sequences += B;
  }
  return r;
}

}  // namespace lethe
