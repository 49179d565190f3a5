#include "kernels/attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/dispatch.h"

namespace lethe::ops {
namespace {
struct Dims {
  int64_t B, T, H, KV, D;
};

Dims check(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  check_cpu(q, op, "q");
  LETHE_CHECK(q.ndim() == 4 && k.ndim() == 4, op, ": expected q[B,T,H,D] and k[B,T,KV,D], got ", q.describe(),
              ", ", k.describe());
  Dims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  check_shape(k, {d.B, d.T, d.KV, d.D}, op, "k");
  check_shape(v, {d.B, d.T, d.KV, d.D}, op, "v");
  LETHE_CHECK(d.KV > 0 && d.H % d.KV == 0, op, ": ", d.H, " query heads are not a multiple of ", d.KV,
              " kv heads");
  return d;
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o, Tensor& lse) {
  const Dims d = check(q, k, v, "attention_forward");
  check_shape(o, q.shape(), "attention_forward", "o");
  check_shape(lse, {d.B, d.H, d.T}, "attention_forward", "lse");
  cpu::dispatch_float(q.dtype(), "attention_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *Q = q.data<scalar_t>(), *K = k.data<scalar_t>(), *V = v.data<scalar_t>();
    scalar_t *O = o.data<scalar_t>(), *L = lse.data<scalar_t>();
    const int64_t group = d.H / d.KV, qs = d.H * d.D, ks = d.KV * d.D;
#pragma omp parallel
    {
      std::vector<scalar_t> p(size_t(d.T));
#pragma omp for collapse(2) schedule(dynamic)
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t h = 0; h < d.H; ++h) {
          const int64_t kh = h / group;
          const scalar_t* Kb = K + b * d.T * ks + kh * d.D;
          const scalar_t* Vb = V + b * d.T * ks + kh * d.D;
          for (int64_t i = 0; i < d.T; ++i) {
            const scalar_t* qi = Q + (b * d.T + i) * qs + h * d.D;
            scalar_t m = -std::numeric_limits<scalar_t>::infinity();
            for (int64_t j = 0; j <= i; ++j) {
              p[j] = scalar_t(scale) * dot(qi, Kb + j * ks, d.D);
              m = std::max(m, p[j]);
            }
            scalar_t l = 0;
            for (int64_t j = 0; j <= i; ++j) l += (p[j] = std::exp(p[j] - m));
            scalar_t* oi = O + (b * d.T + i) * qs + h * d.D;
            for (int64_t c = 0; c < d.D; ++c) oi[c] = 0;
            for (int64_t j = 0; j <= i; ++j) {
              const scalar_t w = p[j] / l;
              const scalar_t* vj = Vb + j * ks;
              for (int64_t c = 0; c < d.D; ++c) oi[c] += w * vj[c];
            }
            L[(b * d.H + h) * d.T + i] = m + std::log(l);
          }
        }
    }
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                        const Tensor& lse, double scale, Tensor& dq, Tensor& dk, Tensor& dv) {
  const Dims d = check(q, k, v, "attention_backward");
  check_shape(dout, q.shape(), "attention_backward", "dout");
  check_shape(o, q.shape(), "attention_backward", "o");
  check_shape(lse, {d.B, d.H, d.T}, "attention_backward", "lse");
  check_shape(dq, q.shape(), "attention_backward", "dq");
  check_shape(dk, k.shape(), "attention_backward", "dk");
  check_shape(dv, v.shape(), "attention_backward", "dv");
  dk.zero_();
  dv.zero_();
  cpu::dispatch_float(q.dtype(), "attention_backward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *Q = q.data<scalar_t>(), *K = k.data<scalar_t>(), *V = v.data<scalar_t>(),
                   *O = o.data<scalar_t>(), *L = lse.data<scalar_t>(), *DO = dout.data<scalar_t>();
    scalar_t *DQ = dq.data<scalar_t>(), *DK = dk.data<scalar_t>(), *DV = dv.data<scalar_t>();
    const int64_t group = d.H / d.KV, qs = d.H * d.D, ks = d.KV * d.D;
    const scalar_t sc = scalar_t(scale);
    // One task per (batch, kv head): every query head of the group adds into the same
    // dk/dv rows, so they stay inside one thread and need no atomics.
#pragma omp parallel
    {
      std::vector<scalar_t> p(size_t(d.T));
#pragma omp for collapse(2) schedule(dynamic)
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t kh = 0; kh < d.KV; ++kh) {
          const scalar_t* Kb = K + b * d.T * ks + kh * d.D;
          const scalar_t* Vb = V + b * d.T * ks + kh * d.D;
          scalar_t* dKb = DK + b * d.T * ks + kh * d.D;
          scalar_t* dVb = DV + b * d.T * ks + kh * d.D;
          for (int64_t h = kh * group; h < (kh + 1) * group; ++h)
            for (int64_t i = 0; i < d.T; ++i) {
              const int64_t row = (b * d.T + i) * qs + h * d.D;
              const scalar_t *qi = Q + row, *doi = DO + row;
              const scalar_t li = L[(b * d.H + h) * d.T + i];
              const scalar_t Di = dot(doi, O + row, d.D);  // rowsum(dO * O)
              scalar_t* dqi = DQ + row;
              for (int64_t c = 0; c < d.D; ++c) dqi[c] = 0;
              for (int64_t j = 0; j <= i; ++j) {
                const scalar_t pj = std::exp(sc * dot(qi, Kb + j * ks, d.D) - li);
                const scalar_t ds = pj * (dot(doi, Vb + j * ks, d.D) - Di) * sc;
                const scalar_t *kj = Kb + j * ks;
                scalar_t *dkj = dKb + j * ks, *dvj = dVb + j * ks;
                for (int64_t c = 0; c < d.D; ++c) {
                  dqi[c] += ds * kj[c];
                  dkj[c] += ds * qi[c];
                  dvj[c] += pj * doi[c];
                }
              }
            }
        }
    }
  });
}

}  // namespace lethe::ops
