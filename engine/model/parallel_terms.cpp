#include "engine/model/parallel_terms.h"

#include "engine/parallel/vocab_parallel.h"
#include "kernels/cross_entropy.h"

namespace lethe {

Tensor ReferenceRows::computed(int64_t r0, int64_t r1) {
  const int64_t R = r1 - r0;
  const int64_t Vr = ref_.vocab_shard().size;
  if (!buf_.defined() || buf_.dim(0) < R) buf_ = Tensor::empty({R, Vr}, ref_.storage_dtype(), ref_.device());
  Tensor out = buf_.slice_rows(0, R);
  ref_.logits_rows(r0, r1, out);
  return out;
}

Tensor ReferenceRows::rows(int64_t r0, int64_t r1, DType dtype) {
  const Tensor host = to_host(computed(r0, r1));
  return dtype == host.dtype() ? host : host.to(dtype);
}

Tensor ReferenceRows::rows_like(int64_t r0, int64_t r1, const Tensor& chunk) {
  if (chunk.device() == Device::cpu) return rows(r0, r1, chunk.dtype());
  LETHE_CHECK(ref_.device() == chunk.device(), "the reference model is on ", device_name(ref_.device()),
              ", the model's logits on ", device_name(chunk.device()));
  return computed(r0, r1);
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
  // On a device the chunk, the reference's rows, the gradient and the running sum stay
  // there: the host reads the sum once, after the last chunk.
  const Tensor w = rw.to(m.device());
  Tensor kl = Tensor::zeros({1}, DType::f64, m.device());
  m.head_pass(
      [&](int64_t r0, const Tensor& chunk, Tensor* dchunk) {
        const int64_t r1 = r0 + chunk.dim(0);
        vocab_parallel_kl(q.rows_like(r0, r1, chunk), chunk, w.slice_rows(r0, r1), dchunk, g.tp_group(), scale, kl);
      },
      grad && scale != 0);
  return g.dp_group().all_reduce(to_host(kl).data<double>()[0], ReduceOp::sum);
}

Tensor adversarial_targets(LlamaModel& ref, const Tensor& tokens, const Tensor& targets) {
  const int64_t N = targets.numel();
  const Tensor tg = targets.reshape({N});
  Tensor out = Tensor::empty({N}, DType::i32);
  ref.forward_trunk(tokens);
  ref.head_pass(
      [&](int64_t r0, const Tensor& chunk, Tensor*) {
        const int64_t r1 = r0 + chunk.dim(0);
        Tensor o = out.slice_rows(r0, r1);
        vocab_parallel_argmax_excluding(chunk, tg.slice_rows(r0, r1), ref.vocab_shard(), o, ref.grid().tp_group());
      },
      false);
  return out.reshape(targets.shape());
}

void logprob_moments(LlamaModel& m, Tensor& mu, Tensor& sigma) {
  vocab_parallel_logprob_moments(m.logits(), mu, sigma, m.grid().tp_group());
}

}  // namespace lethe
