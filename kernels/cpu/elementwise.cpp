#include "kernels/elementwise.h"

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const char* op = "add";
  if (DeviceOps* d = route(op, {{"a", &a}, {"b", &b}, {"out", &out}})) return d->add(a, b, out);
  check_cpu(out, op, "out");
  check_cpu(a, op, "a");
  check_cpu(b, op, "b");
  for (const auto& [t, name] : {std::pair{&a, "a"}, {&b, "b"}}) {
    check_shape(*t, out.shape(), op, name);
    check_dtype(*t, out.dtype(), op, name);
  }
  const int64_t n = out.numel();
  cpu::dispatch_float(out.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *x = a.data<scalar_t>(), *y = b.data<scalar_t>();
    scalar_t* o = out.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
  });
}

}  // namespace lethe::ops
