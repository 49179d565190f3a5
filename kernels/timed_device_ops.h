// Where a device step spends its time, by op family: a DeviceOps (kernels/device_ops.h)
// that forwards every call to the registered one and adds the call's wall time and a
// count to its family. The benchmark reads it to show which family is the next
// bottleneck (docs/perf.md).
//
// A launch returns before its kernel ends, so a wall clock around it measures nothing
// useful: `sync` (cuda::synchronize on a GPU, nothing on the host-staged device, whose ops
// finish before they return) runs before the clock starts, so the op does not inherit
// earlier work, and before it stops, so the op's own work is inside. The waits make the
// step slower than an unprofiled one; the shares are of that profiled step, and
// throughput must come from steps run without the decorator.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/device_ops.h"

namespace lethe {

enum class OpFamily {
  gemm,         // linear forward and backward
  attention,    // forward, backward, decode
  norm,         // RMSNorm, residual add + RMSNorm
  rope,         // forward and transpose
  elementwise,  // SwiGLU, add_
  embedding,    // lookup and its scatter
  loss,         // the LM head's row reductions: cross-entropy, KL, moments, argmax
  optimizer,    // AdamW / SGD, gradient sum of squares and clipping scale, non-finite scan
};
inline constexpr int kOpFamilies = 8;
const char* op_family_name(OpFamily f);

struct OpFamilyTimes {
  std::array<int64_t, kOpFamilies> calls{};
  std::array<double, kOpFamilies> seconds{};
  int64_t calls_of(OpFamily f) const { return calls[size_t(f)]; }
  double seconds_of(OpFamily f) const { return seconds[size_t(f)]; }
  double total_seconds() const;
};

// One row of a step's breakdown: a family, or "other" (step time outside every op).
struct StepShare {
  std::string what;
  int64_t calls = 0;  // 0 for "other"
  double seconds = 0;
  double share = 0;   // of the step; the rows sum to 1
};
// The families in enum order, then "other": the step's time outside the op boundary (the
// memory backend's copies and casts, allocation, host work, the decorator's own waits).
// If the ops add up to more than step_seconds (a clock read between two ops' stops), the
// ops' sum is the step, so the shares still sum to 1.
std::vector<StepShare> step_shares(const OpFamilyTimes& times, double step_seconds);

class TimedDeviceOps : public DeviceOps {
 public:
  // sync may be empty (ops that finish before they return). *sink outlives this object.
  TimedDeviceOps(std::unique_ptr<DeviceOps> inner, std::function<void()> sync, OpFamilyTimes* sink);
  // Hands back the wrapped ops; this object must not be called afterwards.
  std::unique_ptr<DeviceOps> release_inner() { return std::move(inner_); }

  const char* name() const override { return inner_->name(); }
  void embedding_forward(const Tensor& ids, const Tensor& table, int64_t first, int64_t vocab, Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t first, int64_t vocab,
                          Tensor& dtable) override;
  void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) override;
  void residual_rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& sum, const Tensor& w, double eps,
                                Tensor& y, Tensor& rstd, Precision precision) override;
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                        bool accumulate_dx, Tensor& dw) override;
  void linear_forward(const Tensor& x, const Tensor& w, Tensor& y) override;
  void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, bool accumulate_dx,
                       Tensor* dw) override;
  void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) override;
  void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) override;
  void qkv_split_rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k,
                      Tensor& v) override;
  void qkv_merge_rope_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos,
                               const Tensor& sin, Tensor& dqkv) override;
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o, Tensor& lse,
                         Precision precision) override;
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                          const Tensor& lse, double scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          Precision precision) override;
  void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n, double scale,
                        Tensor& o, Precision precision) override;
  void swiglu_forward(const Tensor& gu, Tensor& a) override;
  void swiglu_backward(const Tensor& da, const Tensor& gu, Tensor& dgu) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                             Tensor& lse, Tensor& loss) override;
  void cross_entropy_shard_finish(const Tensor& rowmax, const Tensor& sumexp, const Tensor& target_logit,
                                  const Tensor& targets, const Tensor& weights, Tensor& lse, Tensor& logprobs,
                                  Tensor& loss) override;
  void weighted_row_sum(const Tensor& values, const Tensor& weights, Tensor& total) override;
  void hidden_mse(const Tensor& h, const Tensor& target, const Tensor& steer, const Tensor& targets, double grad_scale,
                  double denom, Tensor& dh, Tensor& loss) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                              int64_t first, int64_t vocab, double dloss, Tensor& dlogits) override;
  void cross_entropy_shard_max(const Tensor& logits, const Tensor& targets, int64_t first, int64_t vocab,
                               Tensor& rowmax, Tensor& target_logit) override;
  void cross_entropy_shard_sumexp(const Tensor& logits, const Tensor& rowmax, Tensor& sumexp,
                                  bool difference_in_double) override;
  void softmax_moment_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp, const Tensor& center,
                            Tensor& out) override;
  void argmax_shard(const Tensor& logits, const Tensor& exclude, int64_t first, Tensor& best, Tensor& arg) override;
  void inverse_cdf_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& target, int64_t first,
                         Tensor& arg) override;
  void topk_shard(const Tensor& logits, int64_t first, Tensor& values, Tensor& ids) override;
  void add_at_targets_(Tensor& x, const Tensor& targets, int64_t first, double value) override;
  void kl_shard(const Tensor& ref_logits, const Tensor& logits, const Tensor& lse_q, const Tensor& lse_p,
                const Tensor& row_weight, double grad_scale, Tensor& kl, Tensor* dlogits) override;
  void add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWArgs& a) override;
  void sgd_update(Tensor& p, const Tensor& g, Tensor& buf, const ops::SGDArgs& a) override;
  double sum_squares(const Tensor& x) override;
  std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) override;
  void scale_(Tensor& x, double s) override;
  ops::NonFiniteScan find_nonfinite(const Tensor& x) override;

 private:
  template <class Call>
  auto timed(OpFamily f, Call&& call);

  std::unique_ptr<DeviceOps> inner_;
  std::function<void()> sync_;
  OpFamilyTimes* sink_;
};

// Wraps the registered device ops in a TimedDeviceOps for its lifetime and restores them
// after. Scopes that swap the device ops must nest (this one inside a
// ScopedHostStagedDevice, say), and no op may run on another thread meanwhile.
class ScopedOpTiming {
 public:
  explicit ScopedOpTiming(std::function<void()> sync);
  ~ScopedOpTiming();
  ScopedOpTiming(const ScopedOpTiming&) = delete;
  ScopedOpTiming& operator=(const ScopedOpTiming&) = delete;
  const OpFamilyTimes& times() const { return times_; }

 private:
  OpFamilyTimes times_;
  TimedDeviceOps* installed_ = nullptr;  // owned by the registry while installed
};

}  // namespace lethe
