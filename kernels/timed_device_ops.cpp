#include "kernels/timed_device_ops.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>

#include "engine/core/error.h"

namespace lethe {

const char* op_family_name(OpFamily f) {
  switch (f) {
    case OpFamily::gemm: return "gemm";
    case OpFamily::attention: return "attention";
    case OpFamily::norm: return "norms";
    case OpFamily::rope: return "rope";
    case OpFamily::elementwise: return "swiglu/elementwise";
    case OpFamily::embedding: return "embedding";
    case OpFamily::loss: return "cross-entropy/LM-head reductions";
    case OpFamily::optimizer: return "optimizer";
  }
  return "?";
}

double OpFamilyTimes::total_seconds() const {
  double s = 0;
  for (double x : seconds) s += x;
  return s;
}

std::vector<StepShare> step_shares(const OpFamilyTimes& times, double step_seconds) {
  const double ops = times.total_seconds();
  const double step = std::max(step_seconds, ops);
  std::vector<StepShare> rows;
  for (int f = 0; f < kOpFamilies; ++f)
    rows.push_back({op_family_name(OpFamily(f)), times.calls[size_t(f)], times.seconds[size_t(f)], 0});
  rows.push_back({"other", 0, step - ops, 0});
  for (StepShare& r : rows) r.share = step > 0 ? r.seconds / step : 0;
  return rows;
}

TimedDeviceOps::TimedDeviceOps(std::unique_ptr<DeviceOps> inner, std::function<void()> sync, OpFamilyTimes* sink)
    : inner_(std::move(inner)), sync_(std::move(sync)), sink_(sink) {
  LETHE_CHECK(inner_, "TimedDeviceOps: no device ops to wrap");
  LETHE_CHECK(sink_, "TimedDeviceOps: no place to add the times to");
}

template <class Call>
auto TimedDeviceOps::timed(OpFamily f, Call&& call) {
  using Clock = std::chrono::steady_clock;
  if (sync_) sync_();
  const Clock::time_point t0 = Clock::now();
  auto stop = [&] {
    if (sync_) sync_();
    sink_->seconds[size_t(f)] += std::chrono::duration<double>(Clock::now() - t0).count();
    ++sink_->calls[size_t(f)];
  };
  if constexpr (std::is_void_v<decltype(call())>) {
    call();
    stop();
  } else {
    auto r = call();
    stop();
    return r;
  }
}

void TimedDeviceOps::embedding_forward(const Tensor& ids, const Tensor& table, int64_t first, int64_t vocab,
                                       Tensor& out) {
  timed(OpFamily::embedding, [&] { inner_->embedding_forward(ids, table, first, vocab, out); });
}
void TimedDeviceOps::embedding_backward(const Tensor& ids, const Tensor& dout, int64_t first, int64_t vocab,
                                        Tensor& dtable) {
  timed(OpFamily::embedding, [&] { inner_->embedding_backward(ids, dout, first, vocab, dtable); });
}
void TimedDeviceOps::rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  timed(OpFamily::norm, [&] { inner_->rmsnorm_forward(x, w, eps, y, rstd); });
}
void TimedDeviceOps::residual_rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& sum, const Tensor& w,
                                              double eps, Tensor& y, Tensor& rstd, Precision precision) {
  timed(OpFamily::norm, [&] { inner_->residual_rmsnorm_forward(x, delta, sum, w, eps, y, rstd, precision); });
}
void TimedDeviceOps::rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                                      Tensor& dx, bool accumulate_dx, Tensor& dw) {
  timed(OpFamily::norm, [&] { inner_->rmsnorm_backward(dy, x, w, rstd, dx, accumulate_dx, dw); });
}
void TimedDeviceOps::linear_forward(const Tensor& x, const Tensor& w, Tensor& y) {
  timed(OpFamily::gemm, [&] { inner_->linear_forward(x, w, y); });
}
void TimedDeviceOps::linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx,
                                     bool accumulate_dx, Tensor* dw) {
  timed(OpFamily::gemm, [&] { inner_->linear_backward(dy, x, w, dx, accumulate_dx, dw); });
}
void TimedDeviceOps::rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) {
  timed(OpFamily::rope, [&] { inner_->rope_forward(x, cos, sin, y); });
}
void TimedDeviceOps::rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) {
  timed(OpFamily::rope, [&] { inner_->rope_backward(dy, cos, sin, dx); });
}
void TimedDeviceOps::qkv_split_rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k,
                                    Tensor& v) {
  timed(OpFamily::rope, [&] { inner_->qkv_split_rope(qkv, cos, sin, q, k, v); });
}
void TimedDeviceOps::qkv_merge_rope_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                             const Tensor& cos, const Tensor& sin, Tensor& dqkv) {
  timed(OpFamily::rope, [&] { inner_->qkv_merge_rope_backward(dq, dk, dv, cos, sin, dqkv); });
}
void TimedDeviceOps::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o,
                                       Tensor& lse, Precision precision) {
  timed(OpFamily::attention, [&] { inner_->attention_forward(q, k, v, scale, o, lse, precision); });
}
void TimedDeviceOps::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& o, const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                                        Tensor& dv, Precision precision) {
  timed(OpFamily::attention,
        [&] { inner_->attention_backward(dout, q, k, v, o, lse, scale, dq, dk, dv, precision); });
}
void TimedDeviceOps::attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n,
                                      double scale, Tensor& o, Precision precision) {
  timed(OpFamily::attention, [&] { inner_->attention_decode(q, k_cache, v_cache, n, scale, o, precision); });
}
void TimedDeviceOps::swiglu_forward(const Tensor& gu, Tensor& a) {
  timed(OpFamily::elementwise, [&] { inner_->swiglu_forward(gu, a); });
}
void TimedDeviceOps::swiglu_backward(const Tensor& da, const Tensor& gu, Tensor& dgu) {
  timed(OpFamily::elementwise, [&] { inner_->swiglu_backward(da, gu, dgu); });
}
void TimedDeviceOps::cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                           Tensor& logprobs, Tensor& lse, Tensor& loss) {
  timed(OpFamily::loss, [&] { inner_->cross_entropy_forward(logits, targets, weights, logprobs, lse, loss); });
}
void TimedDeviceOps::cross_entropy_shard_finish(const Tensor& rowmax, const Tensor& sumexp,
                                                const Tensor& target_logit, const Tensor& targets,
                                                const Tensor& weights, Tensor& lse, Tensor& logprobs, Tensor& loss) {
  timed(OpFamily::loss, [&] {
    inner_->cross_entropy_shard_finish(rowmax, sumexp, target_logit, targets, weights, lse, logprobs, loss);
  });
}
void TimedDeviceOps::hidden_mse(const Tensor& h, const Tensor& target, const Tensor& steer, const Tensor& targets,
                                double grad_scale, double denom, Tensor& dh, Tensor& loss) {
  timed(OpFamily::loss, [&] { inner_->hidden_mse(h, target, steer, targets, grad_scale, denom, dh, loss); });
}
void TimedDeviceOps::weighted_row_sum(const Tensor& values, const Tensor& weights, Tensor& total) {
  timed(OpFamily::loss, [&] { inner_->weighted_row_sum(values, weights, total); });
}
void TimedDeviceOps::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                            const Tensor& lse, int64_t first, int64_t vocab, double dloss,
                                            Tensor& dlogits) {
  timed(OpFamily::loss,
        [&] { inner_->cross_entropy_backward(logits, targets, weights, lse, first, vocab, dloss, dlogits); });
}
void TimedDeviceOps::cross_entropy_shard_max(const Tensor& logits, const Tensor& targets, int64_t first,
                                             int64_t vocab, Tensor& rowmax, Tensor& target_logit) {
  timed(OpFamily::loss,
        [&] { inner_->cross_entropy_shard_max(logits, targets, first, vocab, rowmax, target_logit); });
}
void TimedDeviceOps::cross_entropy_shard_sumexp(const Tensor& logits, const Tensor& rowmax, Tensor& sumexp,
                                                bool difference_in_double) {
  timed(OpFamily::loss, [&] { inner_->cross_entropy_shard_sumexp(logits, rowmax, sumexp, difference_in_double); });
}
void TimedDeviceOps::softmax_moment_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp,
                                          const Tensor& center, Tensor& out) {
  timed(OpFamily::loss, [&] { inner_->softmax_moment_shard(logits, rowmax, sumexp, center, out); });
}
void TimedDeviceOps::argmax_shard(const Tensor& logits, const Tensor& exclude, int64_t first, Tensor& best,
                                  Tensor& arg) {
  timed(OpFamily::loss, [&] { inner_->argmax_shard(logits, exclude, first, best, arg); });
}
void TimedDeviceOps::inverse_cdf_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& target,
                                       int64_t first, Tensor& arg) {
  timed(OpFamily::loss, [&] { inner_->inverse_cdf_shard(logits, rowmax, target, first, arg); });
}
void TimedDeviceOps::topk_shard(const Tensor& logits, int64_t first, Tensor& values, Tensor& ids) {
  timed(OpFamily::loss, [&] { inner_->topk_shard(logits, first, values, ids); });
}
void TimedDeviceOps::add_at_targets_(Tensor& x, const Tensor& targets, int64_t first, double value) {
  timed(OpFamily::loss, [&] { inner_->add_at_targets_(x, targets, first, value); });
}
void TimedDeviceOps::kl_shard(const Tensor& ref_logits, const Tensor& logits, const Tensor& lse_q,
                              const Tensor& lse_p, const Tensor& row_weight, double grad_scale, Tensor& kl,
                              Tensor* dlogits) {
  timed(OpFamily::loss,
        [&] { inner_->kl_shard(ref_logits, logits, lse_q, lse_p, row_weight, grad_scale, kl, dlogits); });
}
void TimedDeviceOps::add(const Tensor& a, const Tensor& b, Tensor& out) {
  timed(OpFamily::elementwise, [&] { inner_->add(a, b, out); });
}
void TimedDeviceOps::adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWArgs& a) {
  timed(OpFamily::optimizer, [&] { inner_->adamw_update(p, g, m, v, a); });
}
void TimedDeviceOps::sgd_update(Tensor& p, const Tensor& g, Tensor& buf, const ops::SGDArgs& a) {
  timed(OpFamily::optimizer, [&] { inner_->sgd_update(p, g, buf, a); });
}
double TimedDeviceOps::sum_squares(const Tensor& x) {
  return timed(OpFamily::optimizer, [&] { return inner_->sum_squares(x); });
}
std::vector<double> TimedDeviceOps::sum_squares_each(const std::vector<Tensor>& xs) {
  return timed(OpFamily::optimizer, [&] { return inner_->sum_squares_each(xs); });
}
void TimedDeviceOps::scale_(Tensor& x, double s) {
  timed(OpFamily::optimizer, [&] { inner_->scale_(x, s); });
}
ops::NonFiniteScan TimedDeviceOps::find_nonfinite(const Tensor& x) {
  return timed(OpFamily::optimizer, [&] { return inner_->find_nonfinite(x); });
}

// The registry has one slot and its swap is the only way to interpose on it; taking the
// ops out and putting them back on scope exit leaves the process as it was.
ScopedOpTiming::ScopedOpTiming(std::function<void()> sync) {
  std::unique_ptr<DeviceOps> current = swap_device_ops_for_testing(nullptr);
  LETHE_CHECK(current, "ScopedOpTiming: no device ops are registered to time (a build without CUDA and no stand-in "
                       "device)");
  auto timed = std::make_unique<TimedDeviceOps>(std::move(current), std::move(sync), &times_);
  installed_ = timed.get();
  swap_device_ops_for_testing(std::move(timed));
}

ScopedOpTiming::~ScopedOpTiming() {
  std::unique_ptr<DeviceOps> mine = swap_device_ops_for_testing(nullptr);
  if (mine.get() != installed_) {
    // Scopes that did not nest: restoring anything now would leave the wrong ops in place.
    std::fprintf(stderr, "ScopedOpTiming: the device ops were swapped inside this scope and not restored\n");
    std::abort();
  }
  swap_device_ops_for_testing(installed_->release_inner());
}

}  // namespace lethe
