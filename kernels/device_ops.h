// The op boundary between the model and a device's kernels. Every `ops::` entry
// (kernels/*.h) looks at its tensors' device: all on the CPU, it runs the CPU kernel
// (kernels/cpu); all on the device, it calls the registered DeviceOps; a mix is an error
// naming the op and the tensor on the other side. The model is written once against
// `ops::` and runs wherever its tensors live, as ggml's backends and llm.c do.
//
// Two implementations exist: the CUDA kernels (kernels/cuda/device_ops.cpp, registered at
// start-up in a CUDA build) and the host-staged device (kernels/host_staged_device.h),
// which runs the CPU kernels on host copies of device tensors so the device path of the
// model is exercised, op by op, on a machine without a GPU.
//
// Dtypes on a device follow the bf16 policy (docs/cuda.md): weights and activations bf16,
// statistics (RMSNorm rstd, attention lse, log-probs) and token weights f32, weight
// gradients and optimizer state f32. An implementation that cannot run a combination
// raises an error naming the op and the dtypes.
#pragma once
#include <initializer_list>
#include <memory>
#include <utility>

#include "engine/core/precision.h"
#include "engine/core/tensor.h"
#include "kernels/numerics.h"
#include "kernels/optim.h"

namespace lethe {

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;
  virtual const char* name() const = 0;

  // The vocabulary-parallel forms (kernels/embedding.h); first = 0, vocab = V is the plain lookup.
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, int64_t first, int64_t vocab,
                                 Tensor& out) = 0;
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t first, int64_t vocab,
                                  Tensor& dtable) = 0;
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) = 0;
  virtual void residual_rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& sum, const Tensor& w, double eps,
                                        Tensor& y, Tensor& rstd, Precision precision) = 0;
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                                bool accumulate_dx, Tensor& dw) = 0;
  virtual void linear_forward(const Tensor& x, const Tensor& w, Tensor& y) = 0;
  virtual void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, bool accumulate_dx,
                               Tensor* dw) = 0;
  virtual void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) = 0;
  virtual void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) = 0;
  // The fused q/k/v projection's output split (and rotated), and its transpose (kernels/rope.h).
  virtual void qkv_split_rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k,
                              Tensor& v) = 0;
  virtual void qkv_merge_rope_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos,
                                       const Tensor& sin, Tensor& dqkv) = 0;
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o,
                                 Tensor& lse, Precision precision) = 0;
  virtual void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& o, const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                                  Tensor& dv, Precision precision) = 0;
  virtual void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n,
                                double scale, Tensor& o, Precision precision) = 0;
  // gu [N, 2F]: the fused gate/up projection's output (kernels/swiglu.h).
  virtual void swiglu_forward(const Tensor& gu, Tensor& a) = 0;
  virtual void swiglu_backward(const Tensor& da, const Tensor& gu, Tensor& dgu) = 0;
  // Adds the loss to loss[0] (f64 [1]): no host wait (kernels/cross_entropy.h).
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                     Tensor& logprobs, Tensor& lse, Tensor& loss) = 0;
  virtual void cross_entropy_shard_finish(const Tensor& rowmax, const Tensor& sumexp, const Tensor& target_logit,
                                          const Tensor& targets, const Tensor& weights, Tensor& lse,
                                          Tensor& logprobs, Tensor& loss) = 0;
  virtual void weighted_row_sum(const Tensor& values, const Tensor& weights, Tensor& total) = 0;
  // Over a vocabulary shard (kernels/cross_entropy.h); first = 0, vocab = V is the whole.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                      const Tensor& lse, int64_t first, int64_t vocab, double dloss,
                                      Tensor& dlogits) = 0;
  virtual void cross_entropy_shard_max(const Tensor& logits, const Tensor& targets, int64_t first, int64_t vocab,
                                       Tensor& rowmax, Tensor& target_logit) = 0;
  virtual void cross_entropy_shard_sumexp(const Tensor& logits, const Tensor& rowmax, Tensor& sumexp,
                                          bool difference_in_double) = 0;
  virtual void softmax_moment_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp,
                                    const Tensor& center, Tensor& out) = 0;
  virtual void argmax_shard(const Tensor& logits, const Tensor& exclude, int64_t first, Tensor& best,
                            Tensor& arg) = 0;
  virtual void kl_shard(const Tensor& ref_logits, const Tensor& logits, const Tensor& lse_q, const Tensor& lse_p,
                        const Tensor& row_weight, double grad_scale, Tensor& kl, Tensor* dlogits) = 0;
  virtual void add_at_targets_(Tensor& x, const Tensor& targets, int64_t first, double value) = 0;
  // kernels/hidden_loss.h.
  virtual void hidden_mse(const Tensor& h, const Tensor& target, const Tensor& steer, const Tensor& targets,
                          double grad_scale, double denom, Tensor& dh, Tensor& loss) = 0;
  // Sampling over a vocabulary shard (kernels/sample.h).
  virtual void inverse_cdf_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& target, int64_t first,
                                 Tensor& arg) = 0;
  virtual void topk_shard(const Tensor& logits, int64_t first, Tensor& values, Tensor& ids) = 0;
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWArgs& a) = 0;
  virtual void sgd_update(Tensor& p, const Tensor& g, Tensor& buf, const ops::SGDArgs& a) = 0;
  virtual double sum_squares(const Tensor& x) = 0;
  virtual std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) = 0;
  virtual void scale_(Tensor& x, double s) = 0;
  virtual ops::NonFiniteScan find_nonfinite(const Tensor& x) = 0;
};

// Installs the device's kernels (one set per process, like the memory backend).
void register_device_ops(std::unique_ptr<DeviceOps> ops);
bool device_ops_registered();
// Swaps the kernels for tests; returns the previous ones (null when none).
std::unique_ptr<DeviceOps> swap_device_ops_for_testing(std::unique_ptr<DeviceOps> ops);

// Where `op` runs: null when every defined tensor is on the CPU (run the CPU kernel), the
// registered DeviceOps when every one is on the device. An error names the op and the
// first argument on the other side when they are mixed, and says what is missing when no
// device kernels are registered (a build without CUDA). Null pointers and undefined
// tensors are skipped.
using OpArg = std::pair<const char*, const Tensor*>;
DeviceOps* route(const char* op, std::initializer_list<OpArg> args);

// The device kernels' rule for outputs: each named output shares no memory with any named
// input, nor with another output (cuBLASLt's products, the attention kernels' __restrict__
// buffers). Both device implementations check it, so the host-staged device holds the
// model's device path to it without a GPU. An error names the op and both tensors.
void check_disjoint(const char* op, std::initializer_list<OpArg> outputs, std::initializer_list<OpArg> inputs);

}  // namespace lethe
