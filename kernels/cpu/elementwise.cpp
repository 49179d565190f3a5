#include "kernels/elementwise.h"

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

void add_(Tensor& y, const Tensor& x) {
  if (DeviceOps* d = route("add_", {{"y", &y}, {"x", &x}})) return d->add_(y, x);
  check_cpu(y, "add_", "y");
  check_cpu(x, "add_", "x");
  check_shape(x, y.shape(), "add_", "x");
  check_dtype(x, y.dtype(), "add_", "x");
  const int64_t n = y.numel();
  cpu::dispatch_float(y.dtype(), "add_", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    scalar_t* a = y.data<scalar_t>();
    const scalar_t* b = x.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) a[i] += b[i];
  });
}

}  // namespace lethe::ops
