#include "engine/model/parallel_terms.h"

#include "engine/parallel/vocab_parallel.h"
#include "kernels/cross_entropy.h"

namespace lethe {

double kl_to_reference(LlamaModel& m, LlamaModel& ref, const Tensor& tokens, const Tensor& targets, double scale,
                       bool grad) {
  ProcessGrid& g = m.grid();
  // The reference's logits keep the model's dtype: the log-sum-exps then round alike, so
  // where the two models agree (the first step) p - q is exactly 0. Through f64 the KL
  // gradient would be rounding noise there, and AdamW (which divides by sqrt(v)) turns
  // noise-sized gradients into lr-sized steps.
  const Tensor ref_logits = ref.forward_logits(tokens).to(m.dtype());
  const Tensor& logits = m.forward_logits(tokens);
  const int64_t N = logits.dim(0);
  const int32_t* t = targets.data<int32_t>();
  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) valid += t[i] != ops::kIgnoreIndex;
  valid = g.dp_group().all_reduce(valid, ReduceOp::sum);
  if (valid == 0) return 0;
  // Padding carries no distribution to match: weight 0 skips the row.
  Tensor rw = Tensor::zeros({N}, DType::f64);
  for (int64_t i = 0; i < N; ++i) rw.data<double>()[i] = t[i] != ops::kIgnoreIndex ? 1.0 / double(valid) : 0.0;
  Tensor dl;
  if (grad && scale != 0) dl = Tensor::empty(logits.shape(), logits.dtype());
  const double kl = vocab_parallel_kl(ref_logits, logits, rw, dl.defined() ? &dl : nullptr, g.tp_group());
  if (dl.defined()) {
    if (scale != 1.0) {
      auto scale_all = [&](auto* p) {
        for (int64_t i = 0; i < dl.numel(); ++i) p[i] = decltype(+p[0])(p[i] * scale);
      };
      if (dl.dtype() == DType::f32) scale_all(dl.data<float>());
      else scale_all(dl.data<double>());
    }
    m.backward_logits(dl);
  }
  return g.dp_group().all_reduce(kl, ReduceOp::sum);
}

Tensor adversarial_targets(LlamaModel& ref, const Tensor& tokens, const Tensor& targets) {
  const Tensor& logits = ref.forward_logits(tokens);
  Tensor out = Tensor::empty({targets.numel()}, DType::i32);
  vocab_parallel_argmax_excluding(logits, targets.reshape({targets.numel()}), ref.vocab_shard(), out,
                                  ref.grid().tp_group());
  return out.reshape(targets.shape());
}

void logprob_moments(LlamaModel& m, Tensor& mu, Tensor& sigma) {
  vocab_parallel_logprob_moments(m.logits(), mu, sigma, m.grid().tp_group());
}

}  // namespace lethe
