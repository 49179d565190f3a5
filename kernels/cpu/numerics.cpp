#include "kernels/numerics.h"

#include <cmath>

#include "engine/core/bf16.h"
#include "engine/core/f16.h"
#include "kernels/device_ops.h"

namespace lethe::ops {
namespace {
template <typename T, typename ToFloat>
NonFiniteScan scan(const T* d, int64_t n, ToFloat to_float) {
  NonFiniteScan r;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(to_float(d[i])) && r.count++ == 0) r.first = i;
  return r;
}
}  // namespace

NonFiniteScan find_nonfinite(const Tensor& x) {
  if (!x.defined()) return {};
  if (DeviceOps* d = route("find_nonfinite", {{"x", &x}})) return d->find_nonfinite(x);
  check_cpu(x, "find_nonfinite", "x");
  const int64_t n = x.numel();
  switch (x.dtype()) {
    case DType::f32: return scan(x.data<float>(), n, [](float v) { return v; });
    case DType::f64: return scan(x.data<double>(), n, [](double v) { return v; });
    case DType::bf16: return scan(x.data<bf16>(), n, [](bf16 v) { return bf16_to_float(v); });
    case DType::f16: return scan(x.data<f16>(), n, [](f16 v) { return f16_to_float(v); });
    case DType::i32: return {};
  }
  return {};
}

}  // namespace lethe::ops
