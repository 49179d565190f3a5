#include "kernels/swiglu.h"

#include <cmath>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

void swiglu_forward(const Tensor& g, const Tensor& u, Tensor& a) {
  if (DeviceOps* d = route("swiglu_forward", {{"g", &g}, {"u", &u}, {"a", &a}})) return d->swiglu_forward(g, u, a);
  check_cpu(g, "swiglu_forward", "g");
  check_shape(u, g.shape(), "swiglu_forward", "u");
  check_shape(a, g.shape(), "swiglu_forward", "a");
  const int64_t n = g.numel();
  cpu::dispatch_float(g.dtype(), "swiglu_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *G = g.data<scalar_t>(), *U = u.data<scalar_t>();
    scalar_t* A = a.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) A[i] = G[i] / (scalar_t(1) + std::exp(-G[i])) * U[i];
  });
}

void swiglu_backward(const Tensor& da, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  if (DeviceOps* d = route("swiglu_backward", {{"da", &da}, {"g", &g}, {"u", &u}, {"dg", &dg}, {"du", &du}}))
    return d->swiglu_backward(da, g, u, dg, du);
  check_cpu(da, "swiglu_backward", "da");
  check_shape(da, g.shape(), "swiglu_backward", "da");
  check_shape(dg, g.shape(), "swiglu_backward", "dg");
  check_shape(du, g.shape(), "swiglu_backward", "du");
  const int64_t n = g.numel();
  cpu::dispatch_float(g.dtype(), "swiglu_backward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *DA = da.data<scalar_t>(), *G = g.data<scalar_t>(), *U = u.data<scalar_t>();
    scalar_t *DG = dg.data<scalar_t>(), *DU = du.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t sig = scalar_t(1) / (scalar_t(1) + std::exp(-G[i]));
      const scalar_t silu = G[i] * sig;
      DU[i] = DA[i] * silu;
      DG[i] = DA[i] * U[i] * sig * (scalar_t(1) + G[i] * (scalar_t(1) - sig));
    }
  });
}

}  // namespace lethe::ops
