#include "kernels/rope.h"

#include <cmath>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

std::vector<double> rope_inv_freq(int64_t D, double theta, const RopeScaling& s) {
  LETHE_CHECK(D > 0 && D % 2 == 0, "rope: head_dim must be even and positive, got ", D);
  LETHE_CHECK(theta > 0, "rope: rope_theta must be positive, got ", theta);
  std::vector<double> f(size_t(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) f[i] = 1.0 / std::pow(theta, double(2 * i) / double(D));
  if (s.type == "none") return f;
  LETHE_CHECK(s.factor > 0, "rope_scaling.factor must be positive, got ", s.factor);
  if (s.type == "linear") {
    for (double& x : f) x /= s.factor;
    return f;
  }
  LETHE_CHECK(s.type == "llama3", "rope_scaling.type '", s.type, "' is not supported (none, linear, llama3)");
  LETHE_CHECK(s.high_freq_factor > s.low_freq_factor, "rope_scaling: high_freq_factor must exceed low_freq_factor");
  const double old_ctx = double(s.original_max_position_embeddings);
  const double low_wavelen = old_ctx / s.low_freq_factor, high_wavelen = old_ctx / s.high_freq_factor;
  const double pi = 3.141592653589793;
  for (double& x : f) {
    const double wavelen = 2 * pi / x;
    if (wavelen < high_wavelen) continue;  // high frequencies keep their value
    if (wavelen > low_wavelen) {
      x /= s.factor;
    } else {
      const double smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      x = (1 - smooth) * x / s.factor + smooth * x;
    }
  }
  return f;
}

void rope_tables(const std::vector<double>& inv_freq, int64_t T, DType dt, Tensor& cos, Tensor& sin) {
  const int64_t H = int64_t(inv_freq.size());
  cos = Tensor::empty({T, H}, dt);
  sin = Tensor::empty({T, H}, dt);
  cpu::dispatch_float(dt, "rope_tables", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    scalar_t *c = cos.data<scalar_t>(), *s = sin.data<scalar_t>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H; ++i) {
        const double a = double(t) * inv_freq[i];
        c[t * H + i] = scalar_t(std::cos(a));
        s[t * H + i] = scalar_t(std::sin(a));
      }
  });
}

namespace {
// sign = +1: forward rotation; -1: its transpose (the backward).
void rotate(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y, int sign, const char* op) {
  check_cpu(x, op, "x");
  LETHE_CHECK(x.ndim() == 4, op, ": expected x[B, T, H, D], got ", x.describe());
  const int64_t B = x.dim(0), T = x.dim(1), H = x.dim(2), D = x.dim(3), half = D / 2;
  check_shape(y, x.shape(), op, "y");
  LETHE_CHECK(cos.ndim() == 2 && cos.dim(0) >= T && cos.dim(1) == half, op, ": cos table ", cos.describe(),
              " does not cover T=", T, ", D=", D);
  cpu::dispatch_float(x.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = x.data<scalar_t>(), *C = cos.data<scalar_t>(), *S = sin.data<scalar_t>();
    scalar_t* Y = y.data<scalar_t>();
    const scalar_t sg = scalar_t(sign);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t *c = C + t * half, *s = S + t * half;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t o = ((b * T + t) * H + h) * D;
          for (int64_t i = 0; i < half; ++i) {
            const scalar_t x1 = X[o + i], x2 = X[o + i + half];
            Y[o + i] = x1 * c[i] - sg * x2 * s[i];
            Y[o + i + half] = x2 * c[i] + sg * x1 * s[i];
          }
        }
      }
  });
}
}  // namespace

void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y) {
  if (DeviceOps* d = route("rope_forward", {{"x", &x}, {"cos", &cos}, {"sin", &sin}, {"y", &y}}))
    return d->rope_forward(x, cos, sin, y);
  rotate(x, cos, sin, y, +1, "rope_forward");
}
void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx) {
  if (DeviceOps* d = route("rope_backward", {{"dy", &dy}, {"cos", &cos}, {"sin", &sin}, {"dx", &dx}}))
    return d->rope_backward(dy, cos, sin, dx);
  rotate(dy, cos, sin, dx, -1, "rope_backward");
}

}  // namespace lethe::ops
