#include "kernels/linear.h"

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gemm.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

void linear_forward(const Tensor& x, const Tensor& w, Tensor& y) {
  if (DeviceOps* d = route("linear_forward", {{"x", &x}, {"w", &w}, {"y", &y}})) return d->linear_forward(x, w, y);
  check_cpu(x, "linear_forward", "x");
  LETHE_CHECK(x.ndim() == 2 && w.ndim() == 2, "linear_forward: x and w must be 2-D, got ", x.describe(), ", ",
              w.describe());
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  check_shape(w, {out, in}, "linear_forward", "w");
  check_shape(y, {N, out}, "linear_forward", "y");
  check_dtype(w, x.dtype(), "linear_forward", "w");
  check_dtype(y, x.dtype(), "linear_forward", "y");
  if (N == 0) return;
  cpu::dispatch_float(x.dtype(), "linear_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    cpu::gemm(false, true, int(N), int(out), int(in), scalar_t(1), x.data<scalar_t>(), int(in), w.data<scalar_t>(),
              int(in), scalar_t(0), y.data<scalar_t>(), int(out));
  });
}

void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, bool accumulate_dx,
                     Tensor* dw) {
  if (DeviceOps* d = route("linear_backward", {{"dy", &dy}, {"x", &x}, {"w", &w}, {"dx", dx}, {"dw", dw}}))
    return d->linear_backward(dy, x, w, dx, accumulate_dx, dw);
  check_cpu(dy, "linear_backward", "dy");
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  check_shape(dy, {N, out}, "linear_backward", "dy");
  check_shape(w, {out, in}, "linear_backward", "w");
  if (dx) check_shape(*dx, {N, in}, "linear_backward", "dx");
  if (dw) check_shape(*dw, {out, in}, "linear_backward", "dw");
  if (N == 0) {
    if (dx && !accumulate_dx) dx->zero_();
    return;
  }
  cpu::dispatch_float(x.dtype(), "linear_backward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    if (dx)
      cpu::gemm(false, false, int(N), int(in), int(out), scalar_t(1), dy.data<scalar_t>(), int(out),
                w.data<scalar_t>(), int(in), scalar_t(accumulate_dx ? 1 : 0), dx->data<scalar_t>(), int(in));
    if (dw)
      cpu::gemm(true, false, int(out), int(in), int(N), scalar_t(1), dy.data<scalar_t>(), int(out),
                x.data<scalar_t>(), int(in), scalar_t(1), dw->data<scalar_t>(), int(in));
  });
}

}  // namespace lethe::ops
