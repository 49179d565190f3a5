#include "kernels/rmsnorm.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"
#include "kernels/elementwise.h"

namespace lethe::ops {

void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  if (DeviceOps* d = route("rmsnorm_forward", {{"x", &x}, {"w", &w}, {"y", &y}, {"rstd", &rstd}}))
    return d->rmsnorm_forward(x, w, eps, y, rstd);
  check_cpu(x, "rmsnorm_forward", "x");
  const int64_t N = x.dim(0), C = x.dim(1);
  check_shape(w, {C}, "rmsnorm_forward", "w");
  check_shape(y, {N, C}, "rmsnorm_forward", "y");
  check_shape(rstd, {N}, "rmsnorm_forward", "rstd");
  cpu::dispatch_float(x.dtype(), "rmsnorm_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = x.data<scalar_t>(), *W = w.data<scalar_t>();
    scalar_t *Y = y.data<scalar_t>(), *R = rstd.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t* xi = X + i * C;
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += double(xi[c]) * xi[c];
      scalar_t r = scalar_t(1.0 / std::sqrt(ss / double(C) + eps));
      R[i] = r;
      for (int64_t c = 0; c < C; ++c) Y[i * C + c] = W[c] * (xi[c] * r);
    }
  });
}

int64_t residual_rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& sum, const Tensor& w, double eps,
                                 Tensor& y, Tensor& rstd, Precision precision) {
  if (DeviceOps* d = route("residual_rmsnorm_forward", {{"x", &x},
                                                        {"delta", &delta},
                                                        {"sum", &sum},
                                                        {"w", &w},
                                                        {"y", &y},
                                                        {"rstd", &rstd}})) {
    d->residual_rmsnorm_forward(x, delta, sum, w, eps, y, rstd, precision);
    return 0;
  }
  add(x, delta, sum);
  const int64_t changed = precision == Precision::bf16 ? round_to_bf16_(sum) : 0;
  rmsnorm_forward(sum, w, eps, y, rstd);
  return changed;
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                      bool accumulate_dx, Tensor& dw) {
  if (DeviceOps* d = route("rmsnorm_backward",
                           {{"dy", &dy}, {"x", &x}, {"w", &w}, {"rstd", &rstd}, {"dx", &dx}, {"dw", &dw}}))
    return d->rmsnorm_backward(dy, x, w, rstd, dx, accumulate_dx, dw);
  check_cpu(dy, "rmsnorm_backward", "dy");
  const int64_t N = x.dim(0), C = x.dim(1);
  check_shape(dy, {N, C}, "rmsnorm_backward", "dy");
  check_shape(dx, {N, C}, "rmsnorm_backward", "dx");
  check_shape(dw, {C}, "rmsnorm_backward", "dw");
  check_shape(rstd, {N}, "rmsnorm_backward", "rstd");
  cpu::dispatch_float(x.dtype(), "rmsnorm_backward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = x.data<scalar_t>(), *W = w.data<scalar_t>(), *DY = dy.data<scalar_t>(),
                   *R = rstd.data<scalar_t>();
    scalar_t *DX = dx.data<scalar_t>(), *DW = dw.data<scalar_t>();
    // dx = r * (w*dy) - r^3/C * x * sum(w*dy*x)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t *xi = X + i * C, *gi = DY + i * C;
      double dot = 0;
      for (int64_t c = 0; c < C; ++c) dot += double(W[c]) * gi[c] * xi[c];
      const double r = R[i];
      const scalar_t k = scalar_t(r * r * r * dot / double(C));
      scalar_t* di = DX + i * C;
      for (int64_t c = 0; c < C; ++c) {
        scalar_t v = scalar_t(r) * W[c] * gi[c] - k * xi[c];
        di[c] = accumulate_dx ? di[c] + v : v;
      }
    }
    // dw reduced over rows per channel: fixed order for any thread count.
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t i = 0; i < N; ++i) s += double(DY[i * C + c]) * X[i * C + c] * R[i];
      DW[c] += scalar_t(s);
    }
  });
}

}  // namespace lethe::ops
