#include "kernels/swiglu.h"

#include <cmath>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {
namespace {
// The fused layout's widths: F from a [N, F], checked against gu [N, 2F].
int64_t gate_width(const Tensor& gu, const Tensor& a, const char* op, const char* aname) {
  LETHE_CHECK(a.ndim() == 2, op, ": ", aname, " must be [N, F], got ", a.describe());
  const int64_t N = a.dim(0), F = a.dim(1);
  check_shape(gu, {N, 2 * F}, op, "gu (gate then up in each row)");
  return F;
}
}  // namespace

void swiglu_forward(const Tensor& gu, Tensor& a) {
  if (DeviceOps* d = route("swiglu_forward", {{"gu", &gu}, {"a", &a}})) return d->swiglu_forward(gu, a);
  check_cpu(gu, "swiglu_forward", "gu");
  const int64_t F = gate_width(gu, a, "swiglu_forward", "a"), N = a.dim(0);
  cpu::dispatch_float(gu.dtype(), "swiglu_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* GU = gu.data<scalar_t>();
    scalar_t* A = a.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      const scalar_t *G = GU + r * 2 * F, *U = G + F;
      scalar_t* Ar = A + r * F;
      for (int64_t i = 0; i < F; ++i) Ar[i] = G[i] / (scalar_t(1) + std::exp(-G[i])) * U[i];
    }
  });
}

void swiglu_backward(const Tensor& da, const Tensor& gu, Tensor& dgu) {
  if (DeviceOps* d = route("swiglu_backward", {{"da", &da}, {"gu", &gu}, {"dgu", &dgu}}))
    return d->swiglu_backward(da, gu, dgu);
  check_cpu(da, "swiglu_backward", "da");
  const int64_t F = gate_width(gu, da, "swiglu_backward", "da"), N = da.dim(0);
  check_shape(dgu, gu.shape(), "swiglu_backward", "dgu");
  cpu::dispatch_float(gu.dtype(), "swiglu_backward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *DA = da.data<scalar_t>(), *GU = gu.data<scalar_t>();
    scalar_t* DGU = dgu.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      const scalar_t *G = GU + r * 2 * F, *U = G + F, *D = DA + r * F;
      scalar_t *DG = DGU + r * 2 * F, *DU = DG + F;
      for (int64_t i = 0; i < F; ++i) {
        const scalar_t sig = scalar_t(1) / (scalar_t(1) + std::exp(-G[i]));
        const scalar_t silu = G[i] * sig;
        DU[i] = D[i] * silu;
        DG[i] = D[i] * U[i] * sig * (scalar_t(1) + G[i] * (scalar_t(1) - sig));
      }
    }
  });
}

}  // namespace lethe::ops
