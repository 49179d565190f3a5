#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gemm.h"
#include "kernels/device_ops.h"

// Blocked over query rows: a block of kBlock queries attends to keys [0, block end), so
// the causal upper triangle is skipped block-wise and the products are GEMMs (BLAS runs
// single-threaded inside the OpenMP tasks). Scratch is one [kBlock, T] score tile per task.
namespace lethe::ops {
namespace {
constexpr int64_t kBlock = 64;

struct Dims {
  int64_t B, T, H, KV, D;
};

Dims check(const Tensor& q, const Tensor& k, const Tensor& v, Precision precision, const char* op) {
  check_cpu(q, op, "q");
  LETHE_CHECK(precision == Precision::f32 || q.dtype() == DType::f32, op,
              ": the bf16 policy is emulated on f32 tensors, got ", q.describe());
  LETHE_CHECK(q.ndim() == 4 && k.ndim() == 4, op, ": expected q[B,T,H,D] and k[B,T,KV,D], got ", q.describe(),
              ", ", k.describe());
  Dims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  check_shape(k, {d.B, d.T, d.KV, d.D}, op, "k");
  check_shape(v, {d.B, d.T, d.KV, d.D}, op, "v");
  check_dtype(k, q.dtype(), op, "k");
  check_dtype(v, q.dtype(), op, "v");
  LETHE_CHECK(d.KV > 0 && d.H % d.KV == 0, op, ": ", d.H, " query heads are not a multiple of ", d.KV,
              " kv heads");
  return d;
}

// The CUDA forward's online softmax for one query row, from its raw scores s[0, n)
// (Q K^T, unscaled): keys in tiles of kAttentionKeyTile, scores scaled into base 2, each
// tile's probabilities exp2(s - running max) rounded to bf16 while the row sum l takes
// them unrounded. Leaves in s each key's weight in the output (its rounded probability,
// times the rescaling later tiles apply, over l: the kernel's O = sum P V, rescaled, / l)
// and returns the natural-log lse. tile_base: scratch, one entry per tile.
float bf16_softmax_row(float* s, int64_t n, float scale_log2, std::vector<float>& tile_base) {
  constexpr float kLn2 = 0.6931471805599453f;
  const int64_t tiles = (n + kAttentionKeyTile - 1) / kAttentionKeyTile;
  tile_base.resize(size_t(tiles));
  float m_run = -std::numeric_limits<float>::infinity(), l = 0.f;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t j0 = t * kAttentionKeyTile, j1 = std::min(n, j0 + kAttentionKeyTile);
    float mx = m_run;
    for (int64_t j = j0; j < j1; ++j) mx = std::max(mx, s[j] *= scale_log2);
    // Every tile holds a visible key (key j0 <= the query), so mx is finite.
    float psum = 0.f;
    for (int64_t j = j0; j < j1; ++j) {
      const float p = std::exp2(s[j] - mx);
      psum += p;
      s[j] = round_bf16(p);
    }
    l = l * std::exp2(m_run - mx) + psum;
    m_run = mx;
    tile_base[size_t(t)] = mx;
  }
  const float inv = 1.f / l;
  for (int64_t t = 0; t < tiles; ++t) {
    const float c = std::exp2(tile_base[size_t(t)] - m_run) * inv;
    for (int64_t j = t * kAttentionKeyTile, j1 = std::min(n, j + kAttentionKeyTile); j < j1; ++j) s[j] *= c;
  }
  return m_run * kLn2 + std::log(l);
}
}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o, Tensor& lse,
                       Precision precision) {
  if (DeviceOps* d = route("attention_forward", {{"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}, {"lse", &lse}}))
    return d->attention_forward(q, k, v, scale, o, lse, precision);
  const Dims d = check(q, k, v, precision, "attention_forward");
  const bool bf = precision == Precision::bf16;
  // As the kernels: the scale and log2(e) multiply in float.
  const float scale_log2 = float(scale) * 1.4426950408889634f;
  check_shape(o, q.shape(), "attention_forward", "o");
  check_shape(lse, {d.B, d.H, d.T}, "attention_forward", "lse");
  cpu::dispatch_float(q.dtype(), "attention_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *Q = q.data<scalar_t>(), *K = k.data<scalar_t>(), *V = v.data<scalar_t>();
    scalar_t *O = o.data<scalar_t>(), *L = lse.data<scalar_t>();
    const int64_t group = d.H / d.KV, qs = d.H * d.D, ks = d.KV * d.D;
    const int64_t nblk = (d.T + kBlock - 1) / kBlock;
#pragma omp parallel
    {
      std::vector<scalar_t> S(size_t(kBlock * d.T));
      std::vector<float> tile_base;
#pragma omp for collapse(3) schedule(dynamic)
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t h = 0; h < d.H; ++h)
          for (int64_t blk = 0; blk < nblk; ++blk) {
            const int64_t i0 = blk * kBlock, i1 = std::min(d.T, i0 + kBlock), rows = i1 - i0;
            const scalar_t* Qb = Q + (b * d.T + i0) * qs + h * d.D;
            const scalar_t* Kb = K + b * d.T * ks + (h / group) * d.D;
            const scalar_t* Vb = V + b * d.T * ks + (h / group) * d.D;
            // S[rows, i1] = scale * Q_blk K[0:i1]^T (bf16: unscaled, scaled as the kernels do)
            cpu::gemm(false, true, int(rows), int(i1), int(d.D), scalar_t(bf ? 1.0 : scale), Qb, int(qs), Kb,
                      int(ks), scalar_t(0), S.data(), int(i1));
            for (int64_t r = 0; r < rows; ++r) {
              scalar_t* s = S.data() + r * i1;
              const int64_t n = i0 + r + 1;  // causal: keys 0..i
              if constexpr (std::is_same_v<scalar_t, float>)
                if (bf) {
                  L[(b * d.H + h) * d.T + i0 + r] = bf16_softmax_row(s, n, scale_log2, tile_base);
                  for (int64_t j = n; j < i1; ++j) s[j] = 0;
                  continue;
                }
              scalar_t m = -std::numeric_limits<scalar_t>::infinity();
              for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
              scalar_t z = 0;
              for (int64_t j = 0; j < n; ++j) z += (s[j] = std::exp(s[j] - m));
              const scalar_t inv = scalar_t(1) / z;
              for (int64_t j = 0; j < n; ++j) s[j] *= inv;
              for (int64_t j = n; j < i1; ++j) s[j] = 0;
              L[(b * d.H + h) * d.T + i0 + r] = m + std::log(z);
            }
            // O_blk = P V[0:i1]
            cpu::gemm(false, false, int(rows), int(d.D), int(i1), scalar_t(1), S.data(), int(i1), Vb, int(ks),
                      scalar_t(0), O + (b * d.T + i0) * qs + h * d.D, int(qs));
          }
    }
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                        const Tensor& lse, double scale, Tensor& dq, Tensor& dk, Tensor& dv, Precision precision) {
  if (DeviceOps* d = route("attention_backward", {{"dout", &dout}, {"q", &q}, {"k", &k}, {"v", &v}, {"o", &o},
                                                {"lse", &lse}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv}}))
    return d->attention_backward(dout, q, k, v, o, lse, scale, dq, dk, dv, precision);
  const Dims d = check(q, k, v, precision, "attention_backward");
  const bool bf = precision == Precision::bf16;
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
    const int64_t nblk = (d.T + kBlock - 1) / kBlock;
    const scalar_t sc = scalar_t(scale);
    // One task per (batch, kv head): every query head of the group adds into the same
    // dk/dv rows, so they stay inside one task and need no atomics.
#pragma omp parallel
    {
      std::vector<scalar_t> P(size_t(kBlock * d.T)), dP(size_t(kBlock * d.T));
#pragma omp for collapse(2) schedule(dynamic)
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t kh = 0; kh < d.KV; ++kh) {
          const scalar_t* Kb = K + b * d.T * ks + kh * d.D;
          const scalar_t* Vb = V + b * d.T * ks + kh * d.D;
          scalar_t* dKb = DK + b * d.T * ks + kh * d.D;
          scalar_t* dVb = DV + b * d.T * ks + kh * d.D;
          for (int64_t h = kh * group; h < (kh + 1) * group; ++h)
            for (int64_t blk = 0; blk < nblk; ++blk) {
              const int64_t i0 = blk * kBlock, i1 = std::min(d.T, i0 + kBlock), rows = i1 - i0;
              const int64_t off = (b * d.T + i0) * qs + h * d.D;
              const scalar_t *Qb = Q + off, *DOb = DO + off, *Ob = O + off;
              // Recompute P from the saved log-sum-exp.
              cpu::gemm(false, true, int(rows), int(i1), int(d.D), sc, Qb, int(qs), Kb, int(ks), scalar_t(0),
                        P.data(), int(i1));
              // dP = dO V^T
              cpu::gemm(false, true, int(rows), int(i1), int(d.D), scalar_t(1), DOb, int(qs), Vb, int(ks),
                        scalar_t(0), dP.data(), int(i1));
              for (int64_t r = 0; r < rows; ++r) {
                const int64_t n = i0 + r + 1;
                const scalar_t li = L[(b * d.H + h) * d.T + i0 + r];
                scalar_t Di = 0;  // rowsum(dO * O)
                for (int64_t c = 0; c < d.D; ++c) Di += DOb[r * qs + c] * Ob[r * qs + c];
                scalar_t *p = P.data() + r * i1, *dp = dP.data() + r * i1;
                if constexpr (std::is_same_v<scalar_t, float>)
                  if (bf) {
                    // The kernels: dS from the unrounded P, then P and dS rounded to bf16 before
                    // they multiply dO, Q and K; the scale applies to the fp32 products.
                    for (int64_t j = 0; j < n; ++j) {
                      const float pj = std::exp(p[j] - li);
                      dp[j] = round_bf16(pj * (dp[j] - Di));
                      p[j] = round_bf16(pj);
                    }
                    for (int64_t j = n; j < i1; ++j) p[j] = dp[j] = 0;
                    continue;
                  }
                for (int64_t j = 0; j < n; ++j) {
                  p[j] = std::exp(p[j] - li);
                  dp[j] = p[j] * (dp[j] - Di) * sc;  // dS, scaled for dQ and dK
                }
                for (int64_t j = n; j < i1; ++j) p[j] = dp[j] = 0;
              }
              // dQ_blk = dS K;  dK[0:i1] += dS^T Q_blk;  dV[0:i1] += P^T dO_blk (bf16: dS unscaled)
              const scalar_t ds_scale = bf ? sc : scalar_t(1);
              cpu::gemm(false, false, int(rows), int(d.D), int(i1), ds_scale, dP.data(), int(i1), Kb, int(ks),
                        scalar_t(0), DQ + off, int(qs));
              cpu::gemm(true, false, int(i1), int(d.D), int(rows), ds_scale, dP.data(), int(i1), Qb, int(qs),
                        scalar_t(1), dKb, int(ks));
              cpu::gemm(true, false, int(i1), int(d.D), int(rows), scalar_t(1), P.data(), int(i1), DOb, int(qs),
                        scalar_t(1), dVb, int(ks));
            }
        }
    }
  });
}


DecodeDims check_decode_shapes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n,
                               const Tensor& o, const char* op) {
  LETHE_CHECK(q.ndim() == 4 && q.dim(1) == 1 && k_cache.ndim() == 4, op,
              ": expected q[B,1,H,D] and a cache [B,S,KV,D], got ", q.describe(), ", ", k_cache.describe());
  const DecodeDims d{q.dim(0), q.dim(2), q.dim(3), k_cache.dim(1), k_cache.dim(2)};
  check_shape(k_cache, {d.B, d.S, d.KV, d.D}, op, "k_cache");
  check_shape(v_cache, {d.B, d.S, d.KV, d.D}, op, "v_cache");
  check_shape(o, q.shape(), op, "o");
  LETHE_CHECK(d.KV > 0 && d.H % d.KV == 0, op, ": ", d.H, " query heads are not a multiple of ", d.KV, " kv heads");
  LETHE_CHECK(n >= 1 && n <= d.S, op, ": ", n, " cached keys, the cache holds ", d.S);
  return d;
}

void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n, double scale,
                      Tensor& o, Precision precision) {
  if (DeviceOps* d = route("attention_decode", {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"o", &o}}))
    return d->attention_decode(q, k_cache, v_cache, n, scale, o, precision);
  const char* op = "attention_decode";
  check_cpu(q, op, "q");
  LETHE_CHECK(precision == Precision::f32 || q.dtype() == DType::f32, op,
              ": the bf16 policy is emulated on f32 tensors, got ", q.describe());
  const auto [B, H, D, S, KV] = check_decode_shapes(q, k_cache, v_cache, n, o, op);
  check_dtype(k_cache, q.dtype(), op, "k_cache");
  check_dtype(v_cache, q.dtype(), op, "v_cache");
  const bool bf = precision == Precision::bf16;
  const float scale_log2 = float(scale) * 1.4426950408889634f;
  cpu::dispatch_float(q.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *Q = q.data<scalar_t>(), *K = k_cache.data<scalar_t>(), *V = v_cache.data<scalar_t>();
    scalar_t* O = o.data<scalar_t>();
    const int64_t group = H / KV, ks = KV * D;
#pragma omp parallel
    {
      std::vector<scalar_t> s(static_cast<size_t>(n));
      std::vector<float> tile_base;
#pragma omp for collapse(2) schedule(static)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* qh = Q + (b * H + h) * D;
          const scalar_t* Kb = K + b * S * ks + (h / group) * D;
          const scalar_t* Vb = V + b * S * ks + (h / group) * D;
          // The last row of attention_forward over n keys: the same products (bf16: unscaled,
          // then scaled into base 2 per tile) and the same softmax.
          cpu::gemm(false, true, 1, int(n), int(D), scalar_t(bf ? 1.0 : scale), qh, int(D), Kb, int(ks), scalar_t(0),
                    s.data(), int(n));
          bool done = false;
          if constexpr (std::is_same_v<scalar_t, float>)
            if (bf) {
              bf16_softmax_row(s.data(), n, scale_log2, tile_base);
              done = true;
            }
          if (!done) {
            scalar_t m = -std::numeric_limits<scalar_t>::infinity();
            for (int64_t j = 0; j < n; ++j) m = std::max(m, s[size_t(j)]);
            scalar_t z = 0;
            for (int64_t j = 0; j < n; ++j) z += (s[size_t(j)] = std::exp(s[size_t(j)] - m));
            const scalar_t inv = scalar_t(1) / z;
            for (int64_t j = 0; j < n; ++j) s[size_t(j)] *= inv;
          }
          cpu::gemm(false, false, 1, int(D), int(n), scalar_t(1), s.data(), int(n), Vb, int(ks), scalar_t(0),
                    O + (b * H + h) * D, int(D));
        }
    }
  });
}

}  // namespace lethe::ops
