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
// Rotates H heads of D channels per token. x and y hold B*T tokens at token strides xs and
// ys (elements): H*D for a [B, T, H, D] tensor, the fused projection's row width when the
// heads are part of its [N, (H + 2 KV) D] output. sign = +1: forward; -1: its transpose.
// y may alias x (each pair is read before it is written).
template <typename scalar_t>
void rotate_rows(const scalar_t* X, int64_t xs, scalar_t* Y, int64_t ys, int64_t B, int64_t T, int64_t H, int64_t D,
                 const scalar_t* C, const scalar_t* S, int sign) {
  const int64_t half = D / 2;
  const scalar_t sg = scalar_t(sign);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const scalar_t *c = C + t * half, *s = S + t * half;
      for (int64_t h = 0; h < H; ++h) {
        const scalar_t* xr = X + (b * T + t) * xs + h * D;
        scalar_t* yr = Y + (b * T + t) * ys + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const scalar_t x1 = xr[i], x2 = xr[i + half];
          yr[i] = x1 * c[i] - sg * x2 * s[i];
          yr[i + half] = x2 * c[i] + sg * x1 * s[i];
        }
      }
    }
}

void check_table(const Tensor& cos, const Tensor& sin, int64_t T, int64_t D, const char* op) {
  LETHE_CHECK(cos.ndim() == 2 && cos.dim(0) >= T && cos.dim(1) == D / 2, op, ": cos table ", cos.describe(),
              " does not cover T=", T, ", D=", D);
  check_shape(sin, cos.shape(), op, "sin");
}

void rotate(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y, int sign, const char* op) {
  check_cpu(x, op, "x");
  LETHE_CHECK(x.ndim() == 4, op, ": expected x[B, T, H, D], got ", x.describe());
  const int64_t B = x.dim(0), T = x.dim(1), H = x.dim(2), D = x.dim(3);
  LETHE_CHECK(D > 0 && D % 2 == 0, op, ": head_dim must be even and positive, got ", D);
  check_shape(y, x.shape(), op, "y");
  check_table(cos, sin, T, D, op);
  cpu::dispatch_float(x.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    rotate_rows(x.data<scalar_t>(), H * D, y.data<scalar_t>(), H * D, B, T, H, D, cos.data<scalar_t>(),
                sin.data<scalar_t>(), sign);
  });
}

// The shapes of the fused layout: q [B, T, H, D], k and v [B, T, KV, D], qkv [B*T, (H + 2 KV) D].
struct QkvDims {
  int64_t B, T, H, KV, D, W;
};
QkvDims qkv_dims(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, const char* op,
                 const char* qn, const char* kn, const char* vn, const char* qkvn) {
  LETHE_CHECK(q.ndim() == 4, op, ": expected ", qn, "[B, T, H, D], got ", q.describe());
  LETHE_CHECK(k.ndim() == 4, op, ": expected ", kn, "[B, T, KV, D], got ", k.describe());
  const QkvDims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3), (q.dim(2) + 2 * k.dim(2)) * q.dim(3)};
  LETHE_CHECK(d.D > 0 && d.D % 2 == 0, op, ": head_dim must be even and positive, got ", d.D);
  check_shape(k, {d.B, d.T, d.KV, d.D}, op, kn);
  check_shape(v, k.shape(), op, vn);
  check_shape(qkv, {d.B * d.T, d.W}, op, qkvn);
  return d;
}

// rows x width elements copied between buffers whose rows lie ss (src) and ds (dst) apart:
// v between the fused layout (stride W) and [B*T, KV*D].
template <typename scalar_t>
void copy_rows(const scalar_t* src, int64_t ss, scalar_t* dst, int64_t ds, int64_t rows, int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) dst[r * ds + i] = src[r * ss + i];
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

void qkv_split_rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k, Tensor& v) {
  const char* op = "qkv_split_rope";
  if (DeviceOps* d = route(op, {{"qkv", &qkv}, {"cos", &cos}, {"sin", &sin}, {"q", &q}, {"k", &k}, {"v", &v}}))
    return d->qkv_split_rope(qkv, cos, sin, q, k, v);
  check_cpu(qkv, op, "qkv");
  const QkvDims s = qkv_dims(qkv, q, k, v, op, "q", "k", "v", "qkv");
  check_table(cos, sin, s.T, s.D, op);
  cpu::dispatch_float(qkv.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = qkv.data<scalar_t>(), *C = cos.data<scalar_t>(), *S = sin.data<scalar_t>();
    rotate_rows(X, s.W, q.data<scalar_t>(), s.H * s.D, s.B, s.T, s.H, s.D, C, S, +1);
    rotate_rows(X + s.H * s.D, s.W, k.data<scalar_t>(), s.KV * s.D, s.B, s.T, s.KV, s.D, C, S, +1);
    copy_rows(X + (s.H + s.KV) * s.D, s.W, v.data<scalar_t>(), s.KV * s.D, s.B * s.T, s.KV * s.D);
  });
}

void qkv_merge_rope_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos,
                             const Tensor& sin, Tensor& dqkv) {
  const char* op = "qkv_merge_rope_backward";
  if (DeviceOps* d =
          route(op, {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}, {"cos", &cos}, {"sin", &sin}, {"dqkv", &dqkv}}))
    return d->qkv_merge_rope_backward(dq, dk, dv, cos, sin, dqkv);
  check_cpu(dq, op, "dq");
  const QkvDims s = qkv_dims(dqkv, dq, dk, dv, op, "dq", "dk", "dv", "dqkv");
  check_table(cos, sin, s.T, s.D, op);
  cpu::dispatch_float(dq.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *C = cos.data<scalar_t>(), *S = sin.data<scalar_t>();
    scalar_t* Y = dqkv.data<scalar_t>();
    rotate_rows(dq.data<scalar_t>(), s.H * s.D, Y, s.W, s.B, s.T, s.H, s.D, C, S, -1);
    rotate_rows(dk.data<scalar_t>(), s.KV * s.D, Y + s.H * s.D, s.W, s.B, s.T, s.KV, s.D, C, S, -1);
    copy_rows(dv.data<scalar_t>(), s.KV * s.D, Y + (s.H + s.KV) * s.D, s.W, s.B * s.T, s.KV * s.D);
  });
}

}  // namespace lethe::ops
