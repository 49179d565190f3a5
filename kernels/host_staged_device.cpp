#include "kernels/host_staged_device.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "engine/core/bf16.h"
#include "engine/core/error.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/hidden_loss.h"
#include "kernels/linear.h"
#include "kernels/optim.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/sample.h"
#include "kernels/swiglu.h"

namespace lethe {

namespace {

// Copies between host and device memory outside the stand-in's own staging (see
// host_transfers()), and how deep in that staging this thread is.
int64_t transfers = 0;
thread_local int staging_depth = 0;

class HostMemory : public DeviceBackend {
 public:
  const char* name() const override { return "host-staged device"; }
  void* malloc(size_t bytes) override { return std::malloc(bytes); }
  void free(void* p) override { std::free(p); }
  void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t bytes) override {
    if (dst_on_device != src_on_device && staging_depth == 0) ++transfers;
    std::memmove(dst, src, bytes);
  }
  void zero(void* p, size_t bytes) override { std::memset(p, 0, bytes); }
  // The pairs the CUDA backend converts on the device, so that the same conversions stay
  // off the host here too (host_transfers() counts what a GPU would make the host wait for).
  bool convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) override {
    if (src_dtype == DType::f32 && dst_dtype == DType::bf16) {
      for (int64_t i = 0; i < n; ++i) static_cast<bf16*>(dst)[i] = float_to_bf16(static_cast<const float*>(src)[i]);
      return true;
    }
    if (src_dtype == DType::bf16 && dst_dtype == DType::f32) {
      for (int64_t i = 0; i < n; ++i) static_cast<float*>(dst)[i] = bf16_to_float(static_cast<const bf16*>(src)[i]);
      return true;
    }
    return false;
  }
};

// A host copy of a device tensor for the CPU kernel: bf16 widened to f32 (exact), as the
// emulation holds bf16 values in f32 tensors.
Tensor in(const Tensor& t) {
  if (!t.defined()) return Tensor();
  Tensor h = t.to(Device::cpu);
  return h.dtype() == DType::bf16 ? h.to(DType::f32) : h;
}
// Writes the kernel's result back, rounded to the device tensor's dtype.
void out(Tensor& dev, const Tensor& host) { dev.copy_from(host); }

}  // namespace

class ScopedHostStagedDevice::Ops : public DeviceOps {
 public:
  const char* name() const override { return "host-staged device"; }
  int64_t count = 0;

  // One op: counted, and its copies are staging.
  struct Staging {
    explicit Staging(int64_t& n) { ++n; }
    HostStagedStaging scope;
  };

  void embedding_forward(const Tensor& ids, const Tensor& table, int64_t first, int64_t vocab, Tensor& o) override {
    const Staging staging(count);
    Tensor h = in(o);
    ops::embedding_forward_shard(in(ids), in(table), first, vocab, h);
    out(o, h);
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t first, int64_t vocab,
                          Tensor& dtable) override {
    const Staging staging(count);
    Tensor h = in(dtable);
    ops::embedding_backward_shard(in(ids), in(dout), first, vocab, h);
    out(dtable, h);
  }
  void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) override {
    const Staging staging(count);
    Tensor hy = in(y), hr = in(rstd);
    ops::rmsnorm_forward(in(x), in(w), eps, hy, hr);
    out(y, hy);
    out(rstd, hr);
  }
  void residual_rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& sum, const Tensor& w, double eps,
                                Tensor& y, Tensor& rstd, Precision precision) override {
    const Staging staging(count);
    // The CUDA kernel's rules (kernels/cuda/device_ops.cpp); sum may also be x itself.
    check_disjoint("residual_rmsnorm_forward", {{"y", &y}}, {{"sum", &sum}, {"x", &x}, {"delta", &delta}, {"w", &w}});
    check_disjoint("residual_rmsnorm_forward", {{"sum", &sum}}, {{"delta", &delta}, {"w", &w}});
    Tensor hsum = in(sum), hy = in(y), hr = in(rstd);
    ops::residual_rmsnorm_forward(in(x), in(delta), hsum, in(w), eps, hy, hr, precision);
    out(sum, hsum);
    out(y, hy);
    out(rstd, hr);
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                        bool accumulate_dx, Tensor& dw) override {
    const Staging staging(count);
    check_disjoint("rmsnorm_backward", {{"dx", &dx}}, {{"dy", &dy}, {"x", &x}, {"w", &w}});
    Tensor hdx = in(dx), hdw = in(dw);
    ops::rmsnorm_backward(in(dy), in(x), in(w), in(rstd), hdx, accumulate_dx, hdw);
    out(dx, hdx);
    out(dw, hdw);
  }
  void linear_forward(const Tensor& x, const Tensor& w, Tensor& y) override {
    const Staging staging(count);
    check_disjoint("linear_forward", {{"y", &y}}, {{"x", &x}, {"w", &w}});
    Tensor hy = in(y);
    ops::linear_forward(in(x), in(w), hy);
    out(y, hy);
  }
  void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, bool accumulate_dx,
                       Tensor* dw) override {
    const Staging staging(count);
    check_disjoint("linear_backward", {{"dx", dx}}, {{"dy", &dy}, {"x", &x}, {"w", &w}});
    Tensor hdx = dx ? in(*dx) : Tensor(), hdw = dw ? in(*dw) : Tensor();
    ops::linear_backward(in(dy), in(x), in(w), dx ? &hdx : nullptr, accumulate_dx, dw ? &hdw : nullptr);
    if (dx) out(*dx, hdx);
    if (dw) out(*dw, hdw);
  }
  void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) override {
    const Staging staging(count);
    Tensor hy = in(y);
    ops::rope_forward(in(x), in(cos), in(sin), hy);
    out(y, hy);
  }
  void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) override {
    const Staging staging(count);
    Tensor hdx = in(dx);
    ops::rope_backward(in(dy), in(cos), in(sin), hdx);
    out(dx, hdx);
  }
  void qkv_split_rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k,
                      Tensor& v) override {
    const Staging staging(count);
    check_disjoint("qkv_split_rope", {{"q", &q}, {"k", &k}, {"v", &v}}, {{"qkv", &qkv}});
    Tensor hq = in(q), hk = in(k), hv = in(v);
    ops::qkv_split_rope(in(qkv), in(cos), in(sin), hq, hk, hv);
    out(q, hq);
    out(k, hk);
    out(v, hv);
  }
  void qkv_merge_rope_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos,
                               const Tensor& sin, Tensor& dqkv) override {
    const Staging staging(count);
    check_disjoint("qkv_merge_rope_backward", {{"dqkv", &dqkv}}, {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}});
    Tensor hd = in(dqkv);
    ops::qkv_merge_rope_backward(in(dq), in(dk), in(dv), in(cos), in(sin), hd);
    out(dqkv, hd);
  }
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o, Tensor& lse,
                         Precision precision) override {
    const Staging staging(count);
    check_disjoint("attention_forward", {{"o", &o}}, {{"q", &q}, {"k", &k}, {"v", &v}});
    Tensor ho = in(o), hl = in(lse);
    ops::attention_forward(in(q), in(k), in(v), scale, ho, hl, precision);
    out(o, ho);
    out(lse, hl);
  }
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                          const Tensor& lse, double scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          Precision precision) override {
    const Staging staging(count);
    check_disjoint("attention_backward", {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}},
                   {{"dout", &dout}, {"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}});
    Tensor hq = in(dq), hk = in(dk), hv = in(dv);
    ops::attention_backward(in(dout), in(q), in(k), in(v), in(o), in(lse), scale, hq, hk, hv, precision);
    out(dq, hq);
    out(dk, hk);
    out(dv, hv);
  }
  void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n, double scale,
                        Tensor& o, Precision precision) override {
    const Staging staging(count);
    Tensor ho = in(o);
    ops::attention_decode(in(q), in(k_cache), in(v_cache), n, scale, ho, precision);
    out(o, ho);
  }
  void swiglu_forward(const Tensor& gu, Tensor& a) override {
    const Staging staging(count);
    check_disjoint("swiglu_forward", {{"a", &a}}, {{"gu", &gu}});
    Tensor ha = in(a);
    ops::swiglu_forward(in(gu), ha);
    out(a, ha);
  }
  void swiglu_backward(const Tensor& da, const Tensor& gu, Tensor& dgu) override {
    const Staging staging(count);
    check_disjoint("swiglu_backward", {{"dgu", &dgu}}, {{"da", &da}, {"gu", &gu}});
    Tensor hd = in(dgu);
    ops::swiglu_backward(in(da), in(gu), hd);
    out(dgu, hd);
  }
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                             Tensor& lse, Tensor& loss) override {
    const Staging staging(count);
    Tensor hp = in(logprobs), hl = in(lse), hs = in(loss);
    ops::cross_entropy_forward(in(logits), in(targets), in(weights), hp, hl, hs);
    out(logprobs, hp);
    out(lse, hl);
    out(loss, hs);
  }
  void cross_entropy_shard_finish(const Tensor& rowmax, const Tensor& sumexp, const Tensor& target_logit,
                                  const Tensor& targets, const Tensor& weights, Tensor& lse, Tensor& logprobs,
                                  Tensor& loss) override {
    const Staging staging(count);
    Tensor hl = in(lse), hp = in(logprobs), hs = in(loss);
    ops::cross_entropy_shard_finish(in(rowmax), in(sumexp), in(target_logit), in(targets), in(weights), hl, hp, hs);
    out(lse, hl);
    if (logprobs.defined()) out(logprobs, hp);
    if (loss.defined()) out(loss, hs);
  }
  void weighted_row_sum(const Tensor& values, const Tensor& weights, Tensor& total) override {
    const Staging staging(count);
    Tensor ht = in(total);
    ops::weighted_row_sum(in(values), in(weights), ht);
    out(total, ht);
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                              int64_t first, int64_t vocab, double dloss, Tensor& dlogits) override {
    const Staging staging(count);
    Tensor hd = in(dlogits);
    ops::cross_entropy_backward_shard(in(logits), in(targets), in(weights), in(lse), first, vocab, dloss, hd);
    out(dlogits, hd);
  }
  void cross_entropy_shard_max(const Tensor& logits, const Tensor& targets, int64_t first, int64_t vocab,
                               Tensor& rowmax, Tensor& target_logit) override {
    const Staging staging(count);
    Tensor hm = in(rowmax), ht = in(target_logit);
    ops::cross_entropy_shard_max(in(logits), in(targets), first, vocab, hm, ht);
    out(rowmax, hm);
    if (target_logit.defined()) out(target_logit, ht);
  }
  void cross_entropy_shard_sumexp(const Tensor& logits, const Tensor& rowmax, Tensor& sumexp,
                                  bool difference_in_double) override {
    const Staging staging(count);
    Tensor hs = in(sumexp);
    ops::cross_entropy_shard_sumexp(in(logits), in(rowmax), hs, difference_in_double);
    out(sumexp, hs);
  }
  void softmax_moment_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp, const Tensor& center,
                            Tensor& o) override {
    const Staging staging(count);
    Tensor ho = in(o);
    ops::softmax_moment_shard(in(logits), in(rowmax), in(sumexp), in(center), ho);
    out(o, ho);
  }
  void argmax_shard(const Tensor& logits, const Tensor& exclude, int64_t first, Tensor& best, Tensor& arg) override {
    const Staging staging(count);
    Tensor hb = in(best), ha = in(arg);
    ops::argmax_shard(in(logits), in(exclude), first, hb, ha);
    out(best, hb);
    out(arg, ha);
  }
  void inverse_cdf_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& target, int64_t first,
                         Tensor& arg) override {
    const Staging staging(count);
    Tensor ha = in(arg);
    ops::inverse_cdf_shard(in(logits), in(rowmax), in(target), first, ha);
    out(arg, ha);
  }
  void topk_shard(const Tensor& logits, int64_t first, Tensor& values, Tensor& ids) override {
    const Staging staging(count);
    Tensor hv = in(values), hi = in(ids);
    ops::topk_shard(in(logits), first, hv, hi);
    out(values, hv);
    out(ids, hi);
  }
  void kl_shard(const Tensor& ref_logits, const Tensor& logits, const Tensor& lse_q, const Tensor& lse_p,
                const Tensor& row_weight, double grad_scale, Tensor& kl, Tensor* dlogits) override {
    const Staging staging(count);
    Tensor hk = in(kl), hd = dlogits ? in(*dlogits) : Tensor();
    ops::kl_shard(in(ref_logits), in(logits), in(lse_q), in(lse_p), in(row_weight), grad_scale, hk,
                  dlogits ? &hd : nullptr);
    out(kl, hk);
    if (dlogits) out(*dlogits, hd);
  }
  void add_at_targets_(Tensor& x, const Tensor& targets, int64_t first, double value) override {
    const Staging staging(count);
    Tensor hx = in(x);
    ops::add_at_targets_(hx, in(targets), first, value);
    out(x, hx);
  }
  void hidden_mse(const Tensor& h, const Tensor& target, const Tensor& steer, const Tensor& targets, double grad_scale,
                  double denom, Tensor& dh, Tensor& loss) override {
    const Staging staging(count);
    // The CPU kernel computes in h's widened dtype (f32): its dh is f32, as a device's.
    Tensor hd = in(dh), hl = in(loss);
    ops::hidden_mse(in(h), in(target), in(steer), in(targets), grad_scale, denom, hd, hl);
    out(dh, hd);
    out(loss, hl);
  }
  void add(const Tensor& a, const Tensor& b, Tensor& o) override {
    const Staging staging(count);
    Tensor ho = in(o);
    ops::add(in(a), in(b), ho);
    out(o, ho);
  }
  void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const ops::AdamWArgs& a) override {
    const Staging staging(count);
    Tensor hp = in(p), hm = in(m), hv = in(v);
    ops::adamw_update(hp, in(g), hm, hv, a);
    out(p, hp);
    out(m, hm);
    out(v, hv);
  }
  void sgd_update(Tensor& p, const Tensor& g, Tensor& buf, const ops::SGDArgs& a) override {
    const Staging staging(count);
    Tensor hp = in(p), hb = in(buf);
    ops::sgd_update(hp, in(g), hb, a);
    out(p, hp);
    if (buf.defined()) out(buf, hb);
  }
  double sum_squares(const Tensor& x) override {
    const Staging staging(count);
    ++transfers;  // a GPU returns the number to a waiting host
    return ops::sum_squares(in(x));
  }
  std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) override {
    const Staging staging(count);
    ++transfers;  // a GPU returns every number at once to a waiting host
    std::vector<double> out;
    out.reserve(xs.size());
    for (const Tensor& x : xs) out.push_back(ops::sum_squares(in(x)));
    return out;
  }
  void scale_(Tensor& x, double s) override {
    const Staging staging(count);
    Tensor h = in(x);
    ops::scale_(h, s);
    out(x, h);
  }
  ops::NonFiniteScan find_nonfinite(const Tensor& x) override {
    const Staging staging(count);
    ++transfers;
    return ops::find_nonfinite(in(x));
  }
};

namespace {
int installed = 0;
}  // namespace

bool host_staged_device_installed() { return installed > 0; }

ScopedHostStagedDevice::ScopedHostStagedDevice() {
  ++installed;
  auto ops = std::make_unique<Ops>();
  ops_ = ops.get();
  prev_backend_ = swap_device_backend_for_testing(std::make_unique<HostMemory>());
  prev_ops_ = swap_device_ops_for_testing(std::move(ops));
}

ScopedHostStagedDevice::~ScopedHostStagedDevice() {
  --installed;
  swap_device_ops_for_testing(std::move(prev_ops_));
  swap_device_backend_for_testing(std::move(prev_backend_));
}

int64_t ScopedHostStagedDevice::ops_run() const { return ops_->count; }

int64_t ScopedHostStagedDevice::host_transfers() const { return transfers; }

HostStagedStaging::HostStagedStaging() { ++staging_depth; }
HostStagedStaging::~HostStagedStaging() { --staging_depth; }

}  // namespace lethe
