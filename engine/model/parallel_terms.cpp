#include "engine/model/parallel_terms.h"

#include "engine/parallel/vocab_parallel.h"
#include "kernels/cross_entropy.h"

namespace lethe {

namespace {
// Scales d(logits) in place (the term's weight in the step).
void scale_rows(Tensor& dl, double scale) {
  if (scale == 1.0) return;
  auto scale_all = [&](auto* p) {
    for (int64_t i = 0; i < dl.numel(); ++i) p[i] = decltype(+p[0])(p[i] * scale);
  };
  if (dl.dtype() == DType::f32) scale_all(dl.data<float>());
  else scale_all(dl.data<double>());
}
}  // namespace

void with_host_chunk(const Tensor& logits, Tensor* dl, const std::function<void(const Tensor&, Tensor*)>& fn) {
  if (logits.device() == Device::cpu && (!dl || dl->device() == Device::cpu)) {
    fn(logits, dl);
    return;
  }
  const Tensor host = to_host(logits);
  if (!dl) {
    fn(host, nullptr);
    return;
  }
  Tensor dl_host = Tensor::empty(dl->shape(), host.dtype());
  fn(host, &dl_host);
  dl->copy_from(dl_host);
}

Tensor ReferenceRows::rows(int64_t r0, int64_t r1, DType dtype) {
  const int64_t R = r1 - r0;
  const int64_t Vr = ref_.vocab_shard().size;
  if (!buf_.defined() || buf_.dim(0) < R) buf_ = Tensor::empty({R, Vr}, ref_.storage_dtype(), ref_.device());
  Tensor out = buf_.slice_rows(0, R);
  ref_.logits_rows(r0, r1, out);
  const Tensor host = to_host(out);
  return dtype == host.dtype() ? host : host.to(dtype);
}

double kl_to_reference(LlamaModel& m, LlamaModel& ref, const Tensor& tokens, const Tensor& targets, double scale,
                       bool grad) {
  ProcessGrid& g = m.grid();
  const int64_t N = targets.numel();
  const int32_t* t = targets.data<int32_t>();
  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) valid += t[i] != ops::kIgnoreIndex;
  valid = g.dp_group().all_reduce(valid, ReduceOp::sum);
  if (valid == 0) return 0;
  // Padding carries no distribution to match: weight 0 skips the row.
  Tensor rw = Tensor::zeros({N}, DType::f64);
  for (int64_t i = 0; i < N; ++i) rw.data<double>()[i] = t[i] != ops::kIgnoreIndex ? 1.0 / double(valid) : 0.0;
  ref.forward_trunk(tokens);
  m.forward_trunk(tokens);
  // Chunk by chunk: the reference's rows are computed as the model's are visited, so
  // neither model's whole [N, V] logits exist. The reference's logits keep the model's
  // dtype: the log-sum-exps then round alike, so where the two models agree (the first
  // step) p - q is exactly 0. Through f64 the KL gradient would be rounding noise there,
  // and AdamW (which divides by sqrt(v)) turns noise-sized gradients into lr-sized steps.
  ReferenceRows q(ref);
  double kl = 0;
  m.head_pass(
      [&](int64_t r0, const Tensor& chunk, Tensor* dchunk) {
        with_host_chunk(chunk, dchunk, [&](const Tensor& logits, Tensor* dl) {
          const int64_t r1 = r0 + logits.dim(0);
          kl += vocab_parallel_kl(q.rows(r0, r1, m.dtype()), logits, rw.slice_rows(r0, r1), dl, g.tp_group());
          if (dl) scale_rows(*dl, scale);
        });
      },
      grad && scale != 0);
  return g.dp_group().all_reduce(kl, ReduceOp::sum);
}

Tensor adversarial_targets(LlamaModel& ref, const Tensor& tokens, const Tensor& targets) {
  const int64_t N = targets.numel();
  const Tensor tg = targets.reshape({N});
  Tensor out = Tensor::empty({N}, DType::i32);
  ref.forward_trunk(tokens);
  ref.head_pass(
      [&](int64_t r0, const Tensor& chunk, Tensor*) {
        const Tensor logits = to_host(chunk);
        const int64_t r1 = r0 + logits.dim(0);
        Tensor o = out.slice_rows(r0, r1);
        vocab_parallel_argmax_excluding(logits, tg.slice_rows(r0, r1), ref.vocab_shard(), o, ref.grid().tp_group());
      },
      false);
  return out.reshape(targets.shape());
}

void logprob_moments(LlamaModel& m, Tensor& mu, Tensor& sigma) {
  vocab_parallel_logprob_moments(to_host(m.logits()), mu, sigma, m.grid().tp_group());
}

}  // namespace lethe
