#include "kernels/hidden_loss.h"

#include <algorithm>

#include "kernels/cpu/dispatch.h"
#include "kernels/cross_entropy.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

void hidden_mse(const Tensor& h, const Tensor& target, const Tensor& steer, const Tensor& targets, double grad_scale,
                double denom, Tensor& dh, Tensor& loss) {
  const char* op = "hidden_mse";
  if (DeviceOps* d = route(op, {{"h", &h}, {"target", &target}, {"steer", &steer}, {"targets", &targets},
                                {"dh", &dh}, {"loss", &loss}}))
    return d->hidden_mse(h, target, steer, targets, grad_scale, denom, dh, loss);
  check_cpu(h, op, "h");
  LETHE_CHECK(h.ndim() == 2, op, ": expected h[N, C], got ", h.describe());
  const int64_t N = h.dim(0), C = h.dim(1);
  LETHE_CHECK(target.defined() != steer.defined(), op, ": give target or steer, not both");
  if (target.defined()) {
    check_shape(target, {N, C}, op, "target");
    check_dtype(target, h.dtype(), op, "target");
  } else {
    check_shape(steer, {C}, op, "steer");
    check_dtype(steer, DType::f64, op, "steer");
  }
  check_shape(targets, {N}, op, "targets");
  check_dtype(targets, DType::i32, op, "targets");
  check_shape(dh, {N, C}, op, "dh");
  check_dtype(dh, h.dtype(), op, "dh");
  check_shape(loss, {1}, op, "loss");
  check_dtype(loss, DType::f64, op, "loss");
  cpu::dispatch_float(h.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *H = h.data<scalar_t>(), *X = target.defined() ? target.data<scalar_t>() : nullptr;
    const double* S = steer.defined() ? steer.data<double>() : nullptr;
    const int32_t* t = targets.data<int32_t>();
    scalar_t* G = dh.data<scalar_t>();
    double sum = 0;  // serial, row-major: the loss does not depend on the thread count
    for (int64_t i = 0; i < N; ++i) {
      if (t[i] == kIgnoreIndex) {
        std::fill(G + i * C, G + (i + 1) * C, scalar_t(0));
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        const double d = double(H[i * C + c]) - (X ? double(X[i * C + c]) : S[c]);
        sum += d * d;
        G[i * C + c] = scalar_t(grad_scale * 2 * d / denom);
      }
    }
    loss.data<double>()[0] += sum;
  });
}

}  // namespace lethe::ops
