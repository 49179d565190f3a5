#include "kernels/cross_entropy.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {
namespace {
void check_args(const Tensor& logits, const Tensor& targets, const Tensor& weights, const char* op) {
  check_cpu(logits, op, "logits");
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, V], got ", logits.describe());
  const int64_t N = logits.dim(0), V = logits.dim(1);
  check_shape(targets, {N}, op, "targets");
  check_dtype(targets, DType::i32, op, "targets");
  check_shape(weights, {N}, op, "weights");
  LETHE_CHECK(weights.dtype() == DType::f32 || weights.dtype() == DType::f64, op, ": weights must be f32 or f64, got ",
              weights.describe());
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LETHE_CHECK(t[i] == kIgnoreIndex || (t[i] >= 0 && t[i] < V), op, ": target ", t[i], " at position ", i,
                " is outside the vocabulary [0, ", V, ")");
}
std::vector<double> as_double(const Tensor& w) {
  std::vector<double> out(size_t(w.numel()));
  if (w.dtype() == DType::f64) std::copy(w.data<double>(), w.data<double>() + w.numel(), out.begin());
  else std::copy(w.data<float>(), w.data<float>() + w.numel(), out.begin());
  return out;
}
}  // namespace

double cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                             Tensor& lse) {
  if (DeviceOps* d = route("cross_entropy_forward", {{"logits", &logits}, {"targets", &targets}, {"weights", &weights},
                                                    {"logprobs", &logprobs}, {"lse", &lse}}))
    return d->cross_entropy_forward(logits, targets, weights, logprobs, lse);
  check_args(logits, targets, weights, "cross_entropy_forward");
  const int64_t N = logits.dim(0), V = logits.dim(1);
  check_shape(logprobs, {N}, "cross_entropy_forward", "logprobs");
  check_shape(lse, {N}, "cross_entropy_forward", "lse");
  double loss = 0;
  cpu::dispatch_float(logits.dtype(), "cross_entropy_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* X = logits.data<scalar_t>();
    const int32_t* tg = targets.data<int32_t>();
    const std::vector<double> w = as_double(weights);
    scalar_t *LP = logprobs.data<scalar_t>(), *LSE = lse.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t* x = X + i * V;
      scalar_t m = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t j = 0; j < V; ++j) m = std::max(m, x[j]);
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(x[j] - m));
      LSE[i] = scalar_t(double(m) + std::log(s));
      LP[i] = tg[i] == kIgnoreIndex ? scalar_t(0) : x[tg[i]] - LSE[i];
    }
    // Serial sum: the loss must not depend on the thread count.
    for (int64_t i = 0; i < N; ++i)
      if (tg[i] != kIgnoreIndex) loss -= double(w[i]) * double(LP[i]);
  });
  return loss;
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                            double dloss, Tensor& dlogits) {
  if (DeviceOps* d = route("cross_entropy_backward", {{"logits", &logits}, {"targets", &targets}, {"weights", &weights},
                                                     {"lse", &lse}, {"dlogits", &dlogits}}))
    return d->cross_entropy_backward(logits, targets, weights, lse, dloss, dlogits);
  check_args(logits, targets, weights, "cross_entropy_backward");
  const int64_t N = logits.dim(0), V = logits.dim(1);
  check_shape(lse, {N}, "cross_entropy_backward", "lse");
  check_shape(dlogits, {N, V}, "cross_entropy_backward", "dlogits");
  cpu::dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = logits.data<scalar_t>(), *LSE = lse.data<scalar_t>();
    const int32_t* tg = targets.data<int32_t>();
    const std::vector<double> w = as_double(weights);
    scalar_t* G = dlogits.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      scalar_t* g = G + i * V;
      if (tg[i] == kIgnoreIndex || w[i] == 0.0) {
        for (int64_t j = 0; j < V; ++j) g[j] = 0;
        continue;
      }
      const scalar_t a = scalar_t(dloss * double(w[i]));
      const scalar_t *x = X + i * V;
      for (int64_t j = 0; j < V; ++j) g[j] = a * std::exp(x[j] - LSE[i]);
      g[tg[i]] -= a;
    }
  });
}

}  // namespace lethe::ops
