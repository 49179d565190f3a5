#include "engine/parallel/vocab_parallel.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"

namespace lethe {
namespace {

void check_logits(const Tensor& logits, const VocabShard* vs, const char* op) {
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  if (vs)
    LETHE_CHECK(logits.dim(1) == vs->size && vs->start >= 0 && vs->start + vs->size <= vs->vocab, op,
                ": logits ", logits.describe(), " do not match the shard [", vs->start, ", ", vs->start + vs->size,
                ") of ", vs->vocab);
}

void check_targets(const Tensor& targets, int64_t N, int64_t V, const char* op) {
  check_shape(targets, {N}, op, "targets");
  check_dtype(targets, DType::i32, op, "targets");
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LETHE_CHECK(t[i] == ops::kIgnoreIndex || (t[i] >= 0 && t[i] < V), op, ": target ", t[i], " at position ", i,
                " is outside the vocabulary [0, ", V, ")");
}

}  // namespace

void vocab_parallel_embedding_forward(const Tensor& ids, const Tensor& table, const VocabShard& vs, Tensor& out,
                                      Communicator& tp) {
  const char* op = "vocab_parallel_embedding_forward";
  LETHE_CHECK(table.ndim() == 2 && table.dim(0) == vs.size, op, ": table ", table.describe(),
              " does not match the shard of ", vs.size, " rows");
  ops::embedding_forward_shard(ids, table, vs.start, vs.vocab, out);
  // Exactly one rank contributes each row, so the sum is exact in any dtype; a bf16
  // activation travels in f32 because the collectives reduce f32 (widening is exact).
  if (out.dtype() == DType::bf16) {
    Tensor wide = out.to(DType::f32);
    tp.all_reduce(wide, ReduceOp::sum);
    out.copy_from(wide);
  } else {
    tp.all_reduce(out, ReduceOp::sum);
  }
}

void vocab_parallel_embedding_backward(const Tensor& ids, const Tensor& dout, const VocabShard& vs, Tensor& dtable) {
  LETHE_CHECK(dtable.ndim() == 2 && dtable.dim(0) == vs.size, "vocab_parallel_embedding_backward: dtable ",
              dtable.describe(), " does not match the shard of ", vs.size, " rows");
  ops::embedding_backward_shard(ids, dout, vs.start, vs.vocab, dtable);
}

namespace {

Tensor on_host(const Tensor& t) { return t.device() == Device::cpu ? t : t.to(Device::cpu); }

// The row statistics of the cross-entropy over the whole vocabulary, from each rank's
// shard (ops::cross_entropy_shard_*) and three [N]-sized all-reduces: the maximum (in the
// statistic dtype: the logits' on the CPU, f32 for bf16 logits, so that a one-rank group
// reproduces ops::cross_entropy_forward bit for bit), the sum of exp(x - max) in double,
// and the target's logit (from the rank holding it; others add exact zeros). Then
// ops::cross_entropy_shard_finish forms lse and, with targets, the log-probabilities and
// the loss, where the logits live: on a device nothing comes to the host, so a chunk
// never waits for it.
void finish_rows(const Tensor& logits, const Tensor* targets, const Tensor* weights, const VocabShard& vs,
                 Communicator& tp, Tensor& lse, Tensor* logprobs, Tensor* loss, const char* op) {
  LETHE_CHECK(logits.ndim() == 2 && logits.dim(1) == vs.size && vs.start >= 0 && vs.start + vs.size <= vs.vocab, op,
              ": logits ", logits.describe(), " do not match the shard [", vs.start, ", ", vs.start + vs.size, ") of ",
              vs.vocab);
  LETHE_CHECK(logits.dtype() == DType::f32 || logits.dtype() == DType::f64 || logits.dtype() == DType::bf16, op,
              ": expected f32, f64 or bf16 logits, got ", logits.describe());
  const int64_t N = logits.dim(0);
  if (targets && targets->device() == Device::cpu) check_targets(*targets, N, vs.vocab, op);
  const DType st = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const Device dev = logits.device();
  Tensor mx = Tensor::empty({N}, st, dev), se = Tensor::empty({N}, DType::f64, dev);
  Tensor z = targets ? Tensor::empty({N}, st, dev) : Tensor();
  ops::cross_entropy_shard_max(logits, targets ? *targets : Tensor(), vs.start, vs.vocab, mx, z);
  tp.all_reduce(mx, ReduceOp::max);
  ops::cross_entropy_shard_sumexp(logits, mx, se);
  tp.all_reduce(se, ReduceOp::sum);
  if (targets) tp.all_reduce(z, ReduceOp::sum);
  Tensor none_lp, none_loss;
  ops::cross_entropy_shard_finish(mx, se, z, targets ? *targets : Tensor(), weights ? *weights : Tensor(), lse,
                                  logprobs ? *logprobs : none_lp, loss ? *loss : none_loss);
}

// On the logits' device as f64 (a device's rows stay there: pass them there to spare a
// copy per call).
Tensor f64_on(const Tensor& t, Device dev) {
  const Tensor d = t.dtype() == DType::f64 ? t : t.to(DType::f64);
  return d.device() == dev ? d : d.to(dev);
}

double read_scalar(const Tensor& t) { return on_host(t).data<double>()[0]; }

}  // namespace

void vocab_parallel_logsumexp(const Tensor& logits, Tensor& lse, Communicator& tp) {
  const char* op = "vocab_parallel_logsumexp";
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  check_shape(lse, {logits.dim(0)}, op, "lse");
  // Only the maximum and the sum are wanted: any shard placement gives the same lse.
  const VocabShard whole{0, logits.dim(1), logits.dim(1)};
  finish_rows(logits, nullptr, nullptr, whole, tp, lse, nullptr, nullptr, op);
}

void vocab_parallel_cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                          const VocabShard& vs, Tensor& logprobs, Tensor& lse, Tensor& loss,
                                          Communicator& tp) {
  const char* op = "vocab_parallel_cross_entropy_forward";
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  const int64_t N = logits.dim(0);
  check_shape(targets, {N}, op, "targets");
  check_dtype(targets, DType::i32, op, "targets");
  check_shape(weights, {N}, op, "weights");
  check_shape(logprobs, {N}, op, "logprobs");
  check_shape(lse, {N}, op, "lse");
  finish_rows(logits, &targets, &weights, vs, tp, lse, &logprobs, &loss, op);
}

double vocab_parallel_cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                            const VocabShard& vs, Tensor& logprobs, Tensor& lse, Communicator& tp) {
  Tensor loss = Tensor::zeros({1}, DType::f64, logits.device());
  vocab_parallel_cross_entropy_forward(logits, targets, weights, vs, logprobs, lse, loss, tp);
  return read_scalar(loss);
}

void vocab_parallel_cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                           const Tensor& lse, const VocabShard& vs, double dloss, Tensor& dlogits) {
  LETHE_CHECK(logits.ndim() == 2 && logits.dim(1) == vs.size, "vocab_parallel_cross_entropy_backward: logits ",
              logits.describe(), " do not match the shard of ", vs.size, " ids");
  ops::cross_entropy_backward_shard(logits, targets, weights, lse, vs.start, vs.vocab, dloss, dlogits);
}

void vocab_parallel_kl(const Tensor& ref_logits, const Tensor& logits, const Tensor& row_weight, Tensor* dlogits,
                       Communicator& tp, double grad_scale, Tensor& total) {
  const char* op = "vocab_parallel_kl";
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  const int64_t N = logits.dim(0), Vr = logits.dim(1);
  check_shape(ref_logits, {N, Vr}, op, "ref_logits");
  check_shape(row_weight, {N}, op, "row_weight");
  if (dlogits) check_shape(*dlogits, {N, Vr}, op, "dlogits");
  // Only the maximum and the sum are wanted from the statistics: any shard placement
  // gives the same log-sum-exps.
  const VocabShard whole{0, Vr, Vr};
  const Device dev = logits.device();
  Tensor lq = Tensor::empty({N}, DType::f64, dev), lp = Tensor::empty({N}, DType::f64, dev);
  finish_rows(ref_logits, nullptr, nullptr, whole, tp, lq, nullptr, nullptr, op);
  finish_rows(logits, nullptr, nullptr, whole, tp, lp, nullptr, nullptr, op);
  const Tensor w = f64_on(row_weight, dev);
  Tensor kl = Tensor::empty({N}, DType::f64, dev);
  ops::kl_shard(ref_logits, logits, lq, lp, w, grad_scale, kl, dlogits);
  tp.all_reduce(kl, ReduceOp::sum);
  ops::weighted_row_sum(kl, w, total);
}

double vocab_parallel_kl(const Tensor& ref_logits, const Tensor& logits, const Tensor& row_weight, Tensor* dlogits,
                         Communicator& tp, double grad_scale) {
  Tensor total = Tensor::zeros({1}, DType::f64, logits.device());
  vocab_parallel_kl(ref_logits, logits, row_weight, dlogits, tp, grad_scale, total);
  return read_scalar(total);
}

void vocab_parallel_logprob_moments(const Tensor& logits, Tensor& mu, Tensor& sigma, Communicator& tp) {
  const char* op = "vocab_parallel_logprob_moments";
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  const int64_t N = logits.dim(0);
  check_shape(mu, {N}, op, "mu");
  check_shape(sigma, {N}, op, "sigma");
  check_dtype(mu, DType::f64, op, "mu");
  check_dtype(sigma, DType::f64, op, "sigma");
  // eval/mia's one-row arithmetic, over the group: the maximum, s = sum exp(x - max) (the
  // difference in double), then the mean of log p and, in a second pass around it, the
  // variance (E[lp^2] - mu^2 cancels for peaked distributions). On a device the logits
  // stay there; the [N] statistics are all-reduced there and read back at the end.
  const Device dev = logits.device();
  const DType st = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor mx = Tensor::empty({N}, st, dev), se = Tensor::empty({N}, DType::f64, dev);
  Tensor m = Tensor::empty({N}, DType::f64, dev), v = Tensor::empty({N}, DType::f64, dev);
  Tensor no_targets, no_target_logit;
  ops::cross_entropy_shard_max(logits, no_targets, 0, logits.dim(1), mx, no_target_logit);
  tp.all_reduce(mx, ReduceOp::max);
  ops::cross_entropy_shard_sumexp(logits, mx, se, true);
  tp.all_reduce(se, ReduceOp::sum);
  ops::softmax_moment_shard(logits, mx, se, Tensor(), m);
  tp.all_reduce(m, ReduceOp::sum);
  ops::softmax_moment_shard(logits, mx, se, m, v);
  tp.all_reduce(v, ReduceOp::sum);
  mu.copy_from(m);
  const Tensor hv = on_host(v);
  Tensor hs = Tensor::empty({N}, DType::f64);
  for (int64_t i = 0; i < N; ++i) hs.data<double>()[i] = std::sqrt(std::max(hv.data<double>()[i], 0.0));
  sigma.copy_from(hs);
}

namespace {
// Row argmax over the whole vocabulary, skipping each row's `skip` id (none when skip is
// undefined); rows whose skip id is kIgnoreIndex get kIgnoreIndex. Each shard's first
// maximum comes from ops::argmax_shard (on the logits' device); among the ranks holding
// the group's maximum the smallest id wins (a max all-reduce of -id), on the host.
void argmax_rows(const Tensor& logits, const Tensor& skip, const VocabShard& vs, Tensor& out, Communicator& tp,
                 const char* op) {
  const int64_t N = logits.dim(0);
  check_shape(out, {N}, op, "out");
  check_dtype(out, DType::i32, op, "out");
  const Device dev = logits.device();
  const DType st = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor best = Tensor::empty({N}, st, dev), arg = Tensor::empty({N}, DType::i32, dev);
  ops::argmax_shard(logits, skip.defined() && skip.device() != dev ? skip.to(dev) : skip, vs.start, best, arg);
  Tensor bv = on_host(best).to(DType::f64);
  const Tensor ha = on_host(arg);
  Tensor global = bv.clone();
  tp.all_reduce(global, ReduceOp::max);
  Tensor neg_idx = Tensor::empty({N}, DType::f64);
  double* ni = neg_idx.data<double>();
  for (int64_t i = 0; i < N; ++i) {
    const int32_t a = ha.data<int32_t>()[i];
    ni[i] = (a < 0 || bv.data<double>()[i] != global.data<double>()[i]) ? -double(vs.vocab) : -double(a);
  }
  tp.all_reduce(neg_idx, ReduceOp::max);
  const Tensor hs = skip.defined() ? on_host(skip) : Tensor();
  for (int64_t i = 0; i < N; ++i)
    out.data<int32_t>()[i] =
        (hs.defined() && hs.data<int32_t>()[i] == ops::kIgnoreIndex) ? ops::kIgnoreIndex : int32_t(-ni[i]);
}
}  // namespace

void vocab_parallel_argmax_excluding(const Tensor& logits, const Tensor& targets, const VocabShard& vs, Tensor& out,
                                     Communicator& tp) {
  const char* op = "vocab_parallel_argmax_excluding";
  check_logits(logits, &vs, op);
  check_targets(targets, logits.dim(0), vs.vocab, op);
  argmax_rows(logits, targets, vs, out, tp, op);
}

void vocab_parallel_argmax(const Tensor& logits, const VocabShard& vs, Tensor& out, Communicator& tp) {
  check_logits(logits, &vs, "vocab_parallel_argmax");
  argmax_rows(logits, Tensor(), vs, out, tp, "vocab_parallel_argmax");
}

}  // namespace lethe
