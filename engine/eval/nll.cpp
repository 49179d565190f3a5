#include "engine/eval/nll.h"

#include <algorithm>
#include <cmath>

#include "engine/data/sequence_sampler.h"
#include "engine/parallel/vocab_parallel.h"
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
  // Under data parallelism dp rank d evaluates batches d, d + dp, d + 2dp, ... and the
  // counts are summed over dp at the end. The model's forward is collective over dp, so
  // every rank runs the same number of forwards: where its batches run out it runs one
  // fully masked sequence, which adds nothing. Each sequence's NLL goes to its own slot,
  // so the per-sequence scores come back in the order of one process.
  const int dp = model.grid().dp(), dp_rank = model.grid().dp_rank();
  const int64_t n_batches = (n + batch_size - 1) / batch_size, rounds = (n_batches + dp - 1) / dp;
  std::vector<double> seq_nll(size_t(n), 0.0), seq_has(size_t(n), 0.0);
  NllResult r;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t bi = round * dp + dp_rank, i0 = bi * batch_size;
    const bool real = bi < n_batches;
    const int64_t B = real ? std::min(batch_size, n - i0) : 1;
    Tensor tok = Tensor::zeros({B, seq_len}, DType::i32), tgt = Tensor::empty({B, seq_len}, DType::i32);
    if (real) {
      for (int64_t b = 0; b < B; ++b)
        s.sequence(i0 + b, tok.data<int32_t>() + b * seq_len, tgt.data<int32_t>() + b * seq_len);
    } else {
      std::fill(tgt.data<int32_t>(), tgt.data<int32_t>() + tgt.numel(), ops::kIgnoreIndex);
    }
    // Weight 1 per token: the returned loss is the summed NLL of the batch.
    Tensor w = Tensor::empty({B, seq_len}, DType::f64);
    std::fill(w.data<double>(), w.data<double>() + w.numel(), 1.0);
    // The most likely id of each position, from each chunk of logits as the loss path
    // computes it; under tp each rank holds a slice of the vocabulary and the argmax is
    // taken across them.
    const int64_t N = B * seq_len;
    std::vector<int32_t> best(size_t(N), 0);
    // The chunk stays where it lives (ops::argmax_shard); only [R] ids come back.
    auto visit = [&](int64_t r0, const Tensor& chunk) {
      const int64_t R = chunk.dim(0);
      Tensor tb = Tensor::empty({R}, DType::i32);
      vocab_parallel_argmax(chunk, model.vocab_shard(), tb, model.grid().tp_group());
      std::copy(tb.data<int32_t>(), tb.data<int32_t>() + R, best.begin() + r0);
    };
    const double batch_nll = model.forward(tok, tgt, &w, visit);
    if (!real) continue;
    const Tensor lp = to_host(model.logprobs());
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
      if (k) {
        seq_nll[size_t(i0 + b)] = sum / double(k);
        seq_has[size_t(i0 + b)] = 1.0;
      }
      local_nll += sum;
    }
    // forward sums its loss over dp: on a grid the rank's own log-probs give its batch's NLL.
    r.nll_sum += dp > 1 ? local_nll : batch_nll;
    for (int64_t k = 0; k < N; ++k) {
      if (t[k] == ops::kIgnoreIndex) continue;
      ++r.tokens;
      r.correct += best[size_t(k)] == t[k];
    }
    r.sequences += B;
  }
  if (dp > 1) {
    Communicator& g = model.grid().dp_group();
    r.nll_sum = g.all_reduce(r.nll_sum, ReduceOp::sum);
    r.tokens = g.all_reduce(r.tokens, ReduceOp::sum);
    r.correct = g.all_reduce(r.correct, ReduceOp::sum);
    r.sequences = g.all_reduce(r.sequences, ReduceOp::sum);
    if (n > 0) {
      Tensor both = Tensor::empty({2, n}, DType::f64);
      std::copy(seq_nll.begin(), seq_nll.end(), both.data<double>());
      std::copy(seq_has.begin(), seq_has.end(), both.data<double>() + n);
      g.all_reduce(both, ReduceOp::sum);  // each slot is non-zero on one rank only: exact
      std::copy(both.data<double>(), both.data<double>() + n, seq_nll.begin());
      std::copy(both.data<double>() + n, both.data<double>() + 2 * n, seq_has.begin());
    }
  }
  for (int64_t i = 0; i < n; ++i)
    if (seq_has[size_t(i)] != 0) r.sequence_nll.push_back(seq_nll[size_t(i)]);
  return r;
}

}  // namespace lethe
