// The bf16 precision policy emulated on the CPU (docs/cuda.md, "Mixed precision"): the
// attention op's bf16 rounding of P and dS, repeated exactly and bounded against exact
// attention; the whole mixed-precision model against the f64 model on the same weights;
// reproducibility; AdamW with fp32 master weights against an f32 run; every rounding point.
//
// Error model of the model-level tolerances (first order, unit gain). bf16 keeps 8
// significant bits, so rounding to nearest has unit roundoff u = 2^-8: a stored value
// becomes v (1 + e), |e| <= u. Between rounding points the test model is normalised:
// RMSNorm rescales every row, matrices are drawn with std 1/sqrt(dim) so a product keeps
// a row's norm, softmax rows sum to 1. A relative perturbation of a row therefore reaches
// the rows computed from it with gain about 1, and with k rounding points upstream a row's
// relative error is at most k u (every rounding error lined up: the first-order worst
// case; independent errors give about u sqrt(k / 3)). Errors are judged per row, each row
// against its own norm (row_error), so a wrong row of small values is not hidden by a
// large row elsewhere in the tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>

#include "engine/core/precision.h"
#include "engine/model/llama.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/sharded_optimizer.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

constexpr double kU = 1.0 / 256;         // bf16 unit roundoff, 2^-8
constexpr double kU32 = 1.0 / 16777216;  // f32 unit roundoff, 2^-24

// ---- helpers -------------------------------------------------------------------------

struct RowError {
  double worst = 0;  // max over rows of |a_r - ref_r|_2 / |ref_r|_2
  int64_t row = -1;
};
// Rows of length row_len (default: the last dimension). A row of zeros in ref must be
// matched exactly: any difference there is an infinite relative error.
RowError row_error(const Tensor& a, const Tensor& ref, int64_t row_len = 0) {
  const auto x = values(a), y = values(ref);
  EXPECT_EQ(x.size(), y.size());
  if (row_len == 0) row_len = ref.dim(ref.ndim() - 1);
  RowError e;
  for (size_t r0 = 0; r0 < y.size(); r0 += size_t(row_len)) {
    double num = 0, den = 0;
    for (size_t i = r0; i < r0 + size_t(row_len); ++i) {
      num += (x[i] - y[i]) * (x[i] - y[i]);
      den += y[i] * y[i];
    }
    const double rel = den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
    if (rel > e.worst || e.row < 0) e = {rel, int64_t(r0) / row_len};
  }
  return e;
}

Tensor bf16_randn(const Shape& s, uint64_t seed, double stddev = 1.0) {
  Tensor t = randn(s, DType::f32, seed, stddev);
  round_to_bf16_(t);
  return t;
}

bool all_equal(const Tensor& a, const Tensor& b) { return values(a) == values(b); }

// ---- attention: the kernels' rounding, repeated exactly ------------------------------
//
// Inputs whose scores are exact in f32: q and k have one non-zero channel holding small
// integers and the scale is 1/4 (head_dim 16), so Q K^T and scale * Q K^T are exact
// whatever order a GEMM sums in. The op's float arithmetic for P (tile maximum, exp2,
// row sum) and for dS (dO has one non-zero channel, so dP and rowsum(dO O) are single
// exact products) is then a fixed sequence of roundings this test repeats bit for bit;
// only the final sums over keys (the GEMMs) may differ, by at most gamma_n = n 2^-24
// relative to the sum of the magnitudes of their n terms.

constexpr int64_t kT = 100, kH = 2, kKV = 1, kD = 16;  // keys in a full tile and a partial one; GQA
constexpr double kScale = 0.25;                        // 1 / sqrt(16), exact

struct ExactInputs {
  Tensor q, k, v, dout, o;
};
ExactInputs exact_inputs() {
  ExactInputs in{Tensor::zeros({1, kT, kH, kD}, DType::f32), Tensor::zeros({1, kT, kKV, kD}, DType::f32),
                 bf16_randn({1, kT, kKV, kD}, 31), Tensor::zeros({1, kT, kH, kD}, DType::f32),
                 bf16_randn({1, kT, kH, kD}, 32, 0.5)};
  for (int64_t t = 0; t < kT; ++t) {
    // The second tile's keys score higher, so rows past 64 change their running maximum
    // at the tile boundary.
    in.k.data<float>()[t * kD] = float(t % 5) - 2.0f + (t >= 64 ? 3.0f : 0.0f);
    for (int64_t h = 0; h < kH; ++h) {
      in.q.data<float>()[(t * kH + h) * kD] = float((t + 2 * h) % 4) - 1.0f;
      in.dout.data<float>()[(t * kH + h) * kD] = float((t * 3 + h) % 7) / 4.0f - 0.75f;
    }
  }
  return in;
}

// The forward's probabilities for query (h, i), rounded as the kernels round them: relative
// to the running maximum over 64-key tiles (running = true) or to the row's final maximum.
// Returns each key's weight in the output and the lse, both in the op's float arithmetic.
std::vector<float> kernel_weights(const ExactInputs& in, int64_t h, int64_t i, bool running, float& lse) {
  const float sl2 = float(kScale) * 1.4426950408889634f;
  const int64_t n = i + 1;
  std::vector<float> s(static_cast<size_t>(n)), w(s.size()), base(s.size());
  for (int64_t j = 0; j < n; ++j) s[j] = in.q.data<float>()[(i * kH + h) * kD] * in.k.data<float>()[j * kD] * sl2;
  float m = -INFINITY, l = 0.f, m_final = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m_final = std::max(m_final, s[j]);
  for (int64_t j0 = 0; j0 < n; j0 += 64) {
    const int64_t j1 = std::min(n, j0 + 64);
    float mx = m;
    for (int64_t j = j0; j < j1; ++j) mx = std::max(mx, s[j]);
    if (!running) mx = m_final;
    float psum = 0.f;
    for (int64_t j = j0; j < j1; ++j) {
      const float p = std::exp2(s[j] - mx);
      psum += p;
      w[j] = round_bf16(p);
      base[j] = mx;
    }
    l = l * std::exp2(m - mx) + psum;
    m = mx;
  }
  const float inv = 1.f / l;
  for (int64_t j = 0; j < n; ++j) w[j] *= std::exp2(base[j] - m) * inv;
  lse = m * 0.6931471805599453f + std::log(l);
  return w;
}

TEST(AttentionBf16, ForwardRoundsPRelativeToTheKernelsRunningMaximum) {
  const ExactInputs in = exact_inputs();
  Tensor o = Tensor::empty(in.q.shape(), DType::f32), lse = Tensor::empty({1, kH, kT}, DType::f32);
  ops::attention_forward(in.q, in.k, in.v, kScale, o, lse, Precision::bf16);
  double worst_running = 0, worst_final = 0;  // error / tolerance
  for (int64_t h = 0; h < kH; ++h)
    for (int64_t i = 0; i < kT; ++i) {
      float lse_run = 0, lse_fin = 0;
      const auto w = kernel_weights(in, h, i, true, lse_run), wf = kernel_weights(in, h, i, false, lse_fin);
      // The same float operations; 2 ulps of slack in case a compiler contracts m ln2 + log l.
      EXPECT_NEAR(lse.data<float>()[h * kT + i], lse_run, 2 * kU32 * (std::abs(lse_run) + 1)) << h << ", " << i;
      for (int64_t d = 0; d < kD; ++d) {
        double ref = 0, ref_f = 0, mag = 0;
        for (size_t j = 0; j < w.size(); ++j) {
          const double vj = in.v.data<float>()[int64_t(j) * kD + d];
          ref += double(w[j]) * vj;
          ref_f += double(wf[j]) * vj;
          mag += std::abs(double(w[j]) * vj);
        }
        // The op's sum over i + 1 keys in f32, gamma_{i+1}, and a few ulps of each weight's
        // rescaling (1 / l, the tile factor) should a compiler contract differently: gamma_{i+8}.
        const double tol = double(i + 8) * kU32 * mag + 1e-30;
        const double got = o.data<float>()[(i * kH + h) * kD + d];
        worst_running = std::max(worst_running, std::abs(got - ref) / tol);
        if (i >= 64) worst_final = std::max(worst_final, std::abs(got - ref_f) / tol);
      }
    }
  EXPECT_LE(worst_running, 1.0) << "the op does not round P as the kernels do";
  // Rounding against the row's final maximum instead is a different computation, visible
  // far above the f32 noise for the rows whose maximum moved at the tile boundary.
  EXPECT_GT(worst_final, 16.0);
  std::printf("exact-input forward: error / f32 tolerance %.3g; against final-max rounding %.3g\n", worst_running,
              worst_final);
}

TEST(AttentionBf16, BackwardRoundsPAndDsAsTheKernels) {
  const ExactInputs in = exact_inputs();
  Tensor o = Tensor::empty(in.q.shape(), DType::f32), lse = Tensor::empty({1, kH, kT}, DType::f32);
  ops::attention_forward(in.q, in.k, in.v, kScale, o, lse, Precision::bf16);
  Tensor dq = Tensor::empty(in.q.shape(), DType::f32), dk = Tensor::empty(in.k.shape(), DType::f32),
         dv = Tensor::empty(in.v.shape(), DType::f32);
  // in.o (any bf16 values) stands for the stored output: delta = rowsum(dO * O) only needs
  // to be the same on both sides.
  ops::attention_backward(in.dout, in.q, in.k, in.v, in.o, lse, kScale, dq, dk, dv, Precision::bf16);
  const float sc = float(kScale);
  // Reference sums in double over the op's exact float P and dS, with their magnitudes.
  std::vector<double> rq(kT * kH * kD), mq(rq.size()), rk(kT * kD), mk(rk.size()), rv(kT * kD), mv(rv.size());
  for (int64_t h = 0; h < kH; ++h)
    for (int64_t i = 0; i < kT; ++i) {
      const float qi = in.q.data<float>()[(i * kH + h) * kD], doi = in.dout.data<float>()[(i * kH + h) * kD];
      const float Di = doi * in.o.data<float>()[(i * kH + h) * kD];
      const float li = lse.data<float>()[h * kT + i];
      for (int64_t j = 0; j <= i; ++j) {
        const float kj = in.k.data<float>()[j * kD];
        const float p = std::exp(sc * (qi * kj) - li);
        const float dp = doi * in.v.data<float>()[j * kD];
        const double pb = round_bf16(p), ds = round_bf16(p * (dp - Di));
        rq[(i * kH + h) * kD] += kScale * ds * kj;
        mq[(i * kH + h) * kD] += std::abs(kScale * ds * kj);
        rk[j * kD] += kScale * ds * qi;
        mk[j * kD] += std::abs(kScale * ds * qi);
        for (int64_t d = 0; d < kD; ++d) {
          rv[j * kD + d] += pb * in.dout.data<float>()[(i * kH + h) * kD + d];
          mv[j * kD + d] += std::abs(pb * in.dout.data<float>()[(i * kH + h) * kD + d]);
        }
      }
    }
  // The op's f32 sums: dQ over <= T keys; dK and dV over <= H T queries plus one addition
  // per (head, block of 64 queries) and the scale: gamma_{H T + 8} bounds all three.
  const double g = double(kH * kT + 8) * kU32;
  auto worst = [&](const Tensor& got, const std::vector<double>& ref, const std::vector<double>& mag) {
    double w = 0;
    for (size_t i = 0; i < ref.size(); ++i) w = std::max(w, std::abs(got.data<float>()[i] - ref[i]) / (g * mag[i] + 1e-30));
    return w;
  };
  EXPECT_LE(worst(dq, rq, mq), 1.0) << "dQ: dS is not rounded as the kernels round it";
  EXPECT_LE(worst(dk, rk, mk), 1.0) << "dK: dS is not rounded as the kernels round it";
  EXPECT_LE(worst(dv, rv, mv), 1.0) << "dV: P is not rounded as the kernels round it";
}

// ---- attention: bounded by the rounding of P and dS on random inputs -----------------
//
// Against exact (f64) attention on the same bf16 inputs. With P' = P (1 + e), |e| <= u,
// and the row sum taken unrounded, O' - O = sum_j P_ij e_ij V_j, so
//   |O'_id - O_id| <= u sum_j P_ij |V_jd|;
// in the backward, with P' and dS' = dS (1 + e'):
//   |dV'_jd - dV_jd| <= u sum_i P_ij |dO_id|,   |dQ'_id - dQ_id| <= u s sum_j |dS_ij| |K_jd|,
//   |dK'_jd - dK_jd| <= u s sum_i |dS_ij| |Q_id|,
// plus the op's own f32 arithmetic: a score is a D-term sum (error <= D 2^-24 s sum|q||k|,
// which moves P by that much relatively), then exp, the row sum and the output sums over
// <= H T terms: gamma = (H T + D smax + 32) 2^-24 relative to the same magnitudes, where
// smax = max s sum_d |q_id||k_jd|. dS = P (dP - delta) also carries the f32 error of dP
// and delta: gamma P sum_d |dO_id| (|V_jd| + |O_id|).
TEST(AttentionBf16, WithinTheRoundingBoundOfExactAttention) {
  const int64_t B = 2, T = 150, H = 4, KV = 2, D = 16, G = H / KV;
  const double sc = 1.0 / std::sqrt(double(D));
  const Tensor q = bf16_randn({B, T, H, D}, 41), k = bf16_randn({B, T, KV, D}, 42), v = bf16_randn({B, T, KV, D}, 43),
               dout = bf16_randn({B, T, H, D}, 44);
  Tensor o64 = Tensor::empty(q.shape(), DType::f64), lse64 = Tensor::empty({B, H, T}, DType::f64);
  ops::attention_forward(q.to(DType::f64), k.to(DType::f64), v.to(DType::f64), sc, o64, lse64);
  Tensor o = Tensor::empty(q.shape(), DType::f32), lse = Tensor::empty({B, H, T}, DType::f32);
  ops::attention_forward(q, k, v, sc, o, lse, Precision::bf16);
  Tensor o32 = Tensor::empty(q.shape(), DType::f32), lse32 = Tensor::empty({B, H, T}, DType::f32);
  ops::attention_forward(q, k, v, sc, o32, lse32);

  // Backward inputs shared by the op and the reference: the stored output (bf16) and the
  // f32 lse the op would read.
  Tensor ob = o64.to(DType::f32);
  round_to_bf16_(ob);
  const Tensor lsef = lse64.to(DType::f32);
  Tensor dq = Tensor::empty(q.shape(), DType::f32), dk = Tensor::empty(k.shape(), DType::f32),
         dv = Tensor::empty(v.shape(), DType::f32);
  ops::attention_backward(dout, q, k, v, ob, lsef, sc, dq, dk, dv, Precision::bf16);
  Tensor dq32 = dq.clone(), dk32 = dk.clone(), dv32 = dv.clone();  // the f32 op, for comparison
  ops::attention_backward(dout, q, k, v, ob, lsef, sc, dq32, dk32, dv32);

  auto at = [](const Tensor& t, int64_t b, int64_t s, int64_t h, int64_t d) {
    return double(t.data<float>()[((b * t.dim(1) + s) * t.dim(2) + h) * t.dim(3) + d]);
  };
  double smax = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j <= i; ++j) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += std::abs(at(q, b, i, h, d) * at(k, b, j, h / G, d));
          smax = std::max(smax, sc * s);
        }
  const double gamma = (double(H * T) + double(D) * smax + 32) * kU32;

  // Exact P, dS and the bounds, with the exact results of the backward (f64 sums over the
  // same inputs the op read).
  std::vector<double> bo(size_t(o.numel())), rdq(bo.size()), bdq(bo.size()), rdk(size_t(k.numel())),
      bdk(rdk.size()), rdv(rdk.size()), bdv(rdk.size());
  auto idx = [](int64_t b, int64_t s, int64_t h, int64_t d, int64_t T_, int64_t H_, int64_t D_) {
    return size_t(((b * T_ + s) * H_ + h) * D_ + d);
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const int64_t kh = h / G;
        const double l64 = lse64.data<double>()[(b * H + h) * T + i], lf = lsef.data<float>()[(b * H + h) * T + i];
        double Di = 0;
        for (int64_t d = 0; d < D; ++d) Di += at(dout, b, i, h, d) * at(ob, b, i, h, d);
        for (int64_t j = 0; j <= i; ++j) {
          double s = 0, dp = 0, mag = 0;
          for (int64_t d = 0; d < D; ++d) {
            s += at(q, b, i, h, d) * at(k, b, j, kh, d);
            dp += at(dout, b, i, h, d) * at(v, b, j, kh, d);
            mag += std::abs(at(dout, b, i, h, d)) * (std::abs(at(v, b, j, kh, d)) + std::abs(at(ob, b, i, h, d)));
          }
          const double p_fwd = std::exp(sc * s - l64), p = std::exp(sc * s - lf), ds = p * (dp - Di);
          const double eds = (kU + 2 * gamma) * std::abs(ds) + gamma * p * mag;
          for (int64_t d = 0; d < D; ++d) {
            bo[idx(b, i, h, d, T, H, D)] += (kU + gamma) * p_fwd * std::abs(at(v, b, j, kh, d));
            rdq[idx(b, i, h, d, T, H, D)] += sc * ds * at(k, b, j, kh, d);
            bdq[idx(b, i, h, d, T, H, D)] += sc * eds * std::abs(at(k, b, j, kh, d));
            rdk[idx(b, j, kh, d, T, KV, D)] += sc * ds * at(q, b, i, h, d);
            bdk[idx(b, j, kh, d, T, KV, D)] += sc * eds * std::abs(at(q, b, i, h, d));
            rdv[idx(b, j, kh, d, T, KV, D)] += p * at(dout, b, i, h, d);
            bdv[idx(b, j, kh, d, T, KV, D)] += (kU + 2 * gamma) * p * std::abs(at(dout, b, i, h, d));
          }
        }
      }
  auto ratio = [](const Tensor& got, const std::vector<double>& ref, const std::vector<double>& bound) {
    double w = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      w = std::max(w, std::abs(double(got.data<float>()[i]) - ref[i]) / (bound[i] + 1e-30));
    return w;
  };
  const double ro = ratio(o, values(o64), bo), rq = ratio(dq, rdq, bdq), rk = ratio(dk, rdk, bdk),
               rv = ratio(dv, rdv, bdv);
  EXPECT_LE(ro, 1.0);
  EXPECT_LE(rq, 1.0);
  EXPECT_LE(rk, 1.0);
  EXPECT_LE(rv, 1.0);
  // The lse sums unrounded probabilities: f32 accuracy, |error| <= gamma (its terms are
  // probabilities relative to the maximum, so the sum's relative error is the lse's).
  for (int64_t i = 0; i < lse.numel(); ++i) EXPECT_NEAR(lse.data<float>()[i], lse64.data<double>()[i], gamma);
  // P's rounding is real: without it only f32 error is left, at most gamma / (u + gamma)
  // of O's bound and 2 gamma / (u + 2 gamma) of dV's (about 1% and 2% here), as the f32 op
  // on the same inputs shows; 16 x that leaves room for rounding errors that happen to be
  // small. (dS's rounding is shown by the exact-input test: here dQ's and dK's bounds also
  // carry f32 terms of dP - delta that can dominate where dS cancels.)
  const double share_o = gamma / (kU + gamma), share_v = 2 * gamma / (kU + 2 * gamma);
  EXPECT_LE(ratio(o32, values(o64), bo), share_o);
  EXPECT_LE(ratio(dv32, rdv, bdv), share_v);
  EXPECT_GT(ro, 16 * share_o);
  EXPECT_GT(rv, 16 * share_v);
  std::printf("random-input attention, worst error / bound: O %.3f, dQ %.3f, dK %.3f, dV %.3f (gamma %.2g)\n", ro, rq,
              rk, rv, gamma);
}

TEST(AttentionBf16, RefusesF64Tensors) {
  const Tensor q = randn({1, 4, 2, 16}, DType::f64, 1), k = randn({1, 4, 1, 16}, DType::f64, 2);
  Tensor o = Tensor::empty(q.shape(), DType::f64), lse = Tensor::empty({1, 2, 4}, DType::f64);
  EXPECT_THROW(ops::attention_forward(q, k, k, 0.25, o, lse, Precision::bf16), Error);
}

// ---- the model -----------------------------------------------------------------------

// Normalised as the error model assumes: matrices with std 1/sqrt(dim). T = 72 crosses the
// attention's 64-key tile, so the running maximum is exercised inside the model too.
LlamaConfig config() {
  LlamaConfig c;
  c.name = "bf16-policy";
  c.vocab_size = 37;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 48;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.max_seq_len = 80;
  c.init_std = 1 / std::sqrt(32.0);
  return c;
}
constexpr int64_t kB = 2, kSeq = 72;

void batch(const LlamaConfig& c, Tensor& tok, Tensor& tgt) {
  tok = randint({kB, kSeq}, c.vocab_size, 5);
  tgt = randint({kB, kSeq}, c.vocab_size, 6);
  tgt.data<int32_t>()[3] = ops::kIgnoreIndex;
}

// Elements each rounding point changed, by "pass layer tensor".
using Sites = std::map<std::string, int64_t>;
void record(LlamaModel& m, Sites& sites) {
  m.set_rounding_probe([&sites](const NumericsGuard::Site& s, const Tensor&, int64_t changed) {
    sites[std::string(s.pass) + " " + std::to_string(s.layer) + " " + s.tensor] += changed;
  });
}
// Rounding points of one pass (the weights excluded: both models read the same values),
// plus the ones inside the attention op that no probe sees: P in the forward, P and dS in
// the backward, once per layer.
int64_t roundings(const Sites& sites, const std::string& pass, int64_t layers) {
  int64_t k = 0;
  for (const auto& [key, n] : sites) k += key.rfind(pass + " ", 0) == 0 && key != "forward -1 weights";
  return k + (pass == "forward" ? 1 : 2) * layers;
}

// How far the mean NLL of logits x can be from that of logits y: per token
// |d(-log p_t)| = |dx_t - sum_j p_j dx_j| <= 2 max_j |dx_j|, averaged as the loss averages;
// plus the f32 log-probs (2 roundings of values below |x_t| + |lse| <= 2 max|x| + log V).
double loss_gap_bound(const Tensor& x, const Tensor& y, const Tensor& tgt) {
  const auto a = values(x), b = values(y);
  const int64_t V = x.dim(1);
  double sum = 0, xmax = 0;
  int64_t valid = 0;
  for (int64_t i = 0; i < tgt.numel(); ++i) {
    double dmax = 0;
    for (int64_t j = 0; j < V; ++j) {
      dmax = std::max(dmax, std::abs(a[size_t(i * V + j)] - b[size_t(i * V + j)]));
      xmax = std::max(xmax, std::abs(b[size_t(i * V + j)]));
    }
    if (tgt.data<int32_t>()[i] != ops::kIgnoreIndex) sum += 2 * dmax, ++valid;
  }
  return sum / double(valid) + 2 * kU32 * (2 * xmax + std::log(double(V)));
}

// Rounding points upstream of the logits (12 stored tensors and P per layer, the final
// norm, the logits) and the backward's (11 stored gradients, P and dS per layer; the loss
// gradient, the final norm's input and output gradients), for the 2-layer test model. The
// fused q/k/v and gate/up projections store their output once, and their dy and dx once.
constexpr int64_t kFwdRoundings = 2 * 13 + 2, kBwdRoundings = 2 * 13 + 3;

TEST(Bf16Model, LogitsLossAndGradientsWithinRoundingBoundsOfF64) {
  const LlamaConfig c = config();
  LlamaModel m(c, Precision::bf16);
  m.set_keep_logits(true);  // the test reads logits() after forward()
  m.init_weights(7);
  LlamaModel ref(c, DType::f64);
  ref.set_keep_logits(true);
  ref.params().flat().copy_from(m.params().flat());  // the same (bf16) values, exactly
  Tensor tok, tgt;
  batch(c, tok, tgt);
  Sites sites;
  record(m, sites);
  m.grads().zero();
  ref.grads().zero();
  const double loss = m.forward(tok, tgt), loss64 = ref.forward(tok, tgt);
  m.backward();
  ref.backward();
  const int64_t k_fwd = roundings(sites, "forward", c.n_layers), k_bwd = roundings(sites, "backward", c.n_layers);
  EXPECT_EQ(k_fwd, kFwdRoundings);
  EXPECT_EQ(k_bwd, kBwdRoundings);

  // Logits: every forward rounding point is upstream of them.
  const RowError le = row_error(m.logits(), ref.logits());
  EXPECT_LE(le.worst, double(k_fwd) * kU) << "row " << le.row;

  // Loss, from the logits.
  const double loss_tol = loss_gap_bound(m.logits(), ref.logits(), tgt);
  EXPECT_LE(std::abs(loss - loss64), loss_tol);

  // Gradients: at most every rounding of both passes is upstream of a weight gradient.
  const double grad_tol = double(k_fwd + k_bwd) * kU;
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < m.params().size(); ++i) {
    const RowError ge = row_error(m.grads()[i], ref.grads()[i]);
    EXPECT_LE(ge.worst, grad_tol) << m.params().spec(i).name << " row " << ge.row;
    if (ge.worst > worst) worst = ge.worst, worst_name = m.params().spec(i).name;
  }
  std::printf("bf16 vs f64 (worst row, relative L2): logits %.3g (bound %.3g); loss |d| %.3g (bound %.3g); "
              "gradients %.3g in %s (bound %.3g)\n",
              le.worst, double(k_fwd) * kU, std::abs(loss - loss64), loss_tol, worst, worst_name.c_str(), grad_tol);
}

TEST(Bf16Model, EmulationIsReproducibleAndReallyRounds) {
  const LlamaConfig c = config();
  Tensor tok, tgt;
  batch(c, tok, tgt);
  auto run = [&](LlamaModel& m) {
    m.grads().zero();
    const double loss = m.forward(tok, tgt);
    m.backward();
    return loss;
  };
  LlamaModel a(c, Precision::bf16), b(c, Precision::bf16);
  a.set_keep_logits(true);
  b.set_keep_logits(true);
  a.init_weights(3);
  b.init_weights(3);
  b.set_recompute(true);  // recomputed layers must round exactly as stored ones
  const double la = run(a), lb = run(b);
  EXPECT_EQ(la, lb);
  EXPECT_TRUE(all_equal(a.logits(), b.logits()));
  EXPECT_TRUE(all_equal(a.grads().flat(), b.grads().flat()));
  EXPECT_EQ(run(a), la);  // and again on the same model

  // Against plain f32 on the same weights: bf16's logits are bf16 values, f32's are not,
  // and bf16 is much further from f64. The unit roundoffs differ by 2^16; f32 also rounds
  // inside every sum (at most ~100 terms on any path here), so under the error model the
  // f32 error is below 2^-16 * 100 of bf16's bound; a factor 16 leaves 2^16 / 1600 of
  // room for bf16 errors that happen to cancel.
  LlamaModel f(c);
  f.set_keep_logits(true);
  f.params().flat().copy_from(a.params().flat());
  LlamaModel ref(c, DType::f64);
  ref.set_keep_logits(true);
  ref.params().flat().copy_from(a.params().flat());
  run(f);
  run(ref);
  EXPECT_EQ(count_not_bf16(a.logits()), 0);
  EXPECT_GT(count_not_bf16(f.logits()), 0);
  const double e16 = row_error(a.logits(), ref.logits()).worst, e32 = row_error(f.logits(), ref.logits()).worst;
  EXPECT_GT(e16, 16 * e32) << "bf16 " << e16 << ", f32 " << e32;
  EXPECT_FALSE(all_equal(a.grads().flat(), f.grads().flat()));
  std::printf("worst logits row error against f64: bf16 %.3g, f32 %.3g\n", e16, e32);
}

// Both runs start from the same weights; AdamW (no clipping, no decay), lr 1e-2, six steps
// on one batch (the loss falls from about 4.1 to 1.8). At step s the bf16 loss differs from
// the f32 loss by
//   (a) the forward rounding at the bf16 weights W: loss_gap_bound(bf16 logits, f64 logits
//       at W), the f64 model giving the exact loss; the same for the f32 run (tiny);
//   (b) rounding the master M to W, to first order <g, rd(M) - M>: the rounding errors are
//       independent of g, mean zero and |rd(M_i) - M_i| <= u |M_i|, so by Hoeffding's
//       inequality |<g, rd(M) - M>| <= 6 u |g * M|_2 except with probability 2 e^-18;
//   (c) the masters' drift: AdamW's direction m / sqrt(v) is a ratio of two averages of the
//       gradient, each off by at most the gradient's relative error e_g, so to first order
//       the bf16 steps make the f32 steps' progress to within 2 e_g of it:
//       2 e_g (L_f32(1) - L_f32(s)), with e_g the worst per-row gradient error against f64
//       at the starting weights (itself within the first test's bound).
TEST(Bf16Model, AdamWStepsTrackTheF32Run) {
  const LlamaConfig c = config();
  Tensor tok, tgt;
  batch(c, tok, tgt);
  LlamaModel m16(c, Precision::bf16), m32(c), ref(c, DType::f64);
  m16.set_keep_logits(true);
  m32.set_keep_logits(true);
  ref.set_keep_logits(true);
  m16.init_weights(9);
  m32.params().flat().copy_from(m16.params().flat());
  OptimConfig oc;
  oc.grad_clip = 0;
  Optimizer o16(m16.params(), oc, Precision::bf16), o32(m32.params(), oc);
  const double lr = 1e-2;
  auto pass = [&](LlamaModel& m) {
    m.grads().zero();
    const double l = m.forward(tok, tgt);
    m.backward();
    return l;
  };
  double eg = 0, l32_first = 0, worst = 0;
  for (int s = 1; s <= 6; ++s) {
    const double l16 = pass(m16), l32 = pass(m32);
    ref.params().flat().copy_from(m16.params().flat());
    ref.grads().zero();
    ref.forward(tok, tgt);
    // The rounding bound of the first test holds at every trained weight, too.
    EXPECT_LE(row_error(m16.logits(), ref.logits()).worst, kFwdRoundings * kU) << "step " << s;
    const double a16 = loss_gap_bound(m16.logits(), ref.logits(), tgt);
    if (s == 1) {
      ref.backward();
      for (size_t i = 0; i < m16.params().size(); ++i) eg = std::max(eg, row_error(m16.grads()[i], ref.grads()[i]).worst);
      EXPECT_LE(eg, (kFwdRoundings + kBwdRoundings) * kU);
      l32_first = l32;
    }
    ref.params().flat().copy_from(m32.params().flat());
    ref.forward(tok, tgt);
    const double a32 = loss_gap_bound(m32.logits(), ref.logits(), tgt);
    const auto g = values(m32.grads().flat()), w = values(o16.master().flat());
    double gm = 0;
    for (size_t i = 0; i < g.size(); ++i) gm += g[i] * g[i] * w[i] * w[i];
    const double tol = a16 + a32 + 6 * kU * std::sqrt(gm) + 2 * eg * (l32_first - l32);
    EXPECT_LE(std::abs(l16 - l32), tol) << "step " << s << ": bf16 " << l16 << ", f32 " << l32;
    worst = std::max(worst, std::abs(l16 - l32) / tol);
    if (s == 6) {
      EXPECT_LT(l32, l32_first - 1.0);  // the runs learn, so (c) is tested against real progress
      std::printf("AdamW, 6 steps: loss %.4f -> bf16 %.4f, f32 %.4f; worst |difference| / tolerance %.3f "
                  "(gradient error e_g %.3g)\n",
                  l32_first, l16, l32, worst, eg);
    }
    o16.step(m16.grads(), lr);
    o32.step(m32.grads(), lr);
  }
}

// Every rounding point named in docs/cuda.md exists, is reached and rounds something; the
// residual stream, the logits and the weights hold bf16 values, the weight gradients and
// the master weights do not, and the weights are the master rounded.
TEST(Bf16Model, EveryRoundingPointRoundsAndTheWeightsStayBf16) {
  const LlamaConfig c = config();
  Tensor tok, tgt;
  batch(c, tok, tgt);
  LlamaModel m(c, Precision::bf16);
  m.set_keep_logits(true);
  m.init_weights(4);
  Sites sites;
  record(m, sites);
  m.grads().zero();
  m.forward(tok, tgt);
  m.backward();
  std::vector<std::string> want{"forward -1 weights", "forward -1 model.norm output",
                                "forward -1 lm_head output (logits)",
                                "backward -1 gradient of the loss with respect to the logits",
                                "backward -1 gradient of the model.norm output",
                                "backward -1 gradient of the final residual stream"};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (const char* t :
         {"input_layernorm output", "self_attn.q_proj, k_proj and v_proj output", "q after RoPE", "k after RoPE", "attention output", "self_attn.o_proj output",
          "residual stream after attention", "post_attention_layernorm output",
          "mlp.gate_proj and mlp.up_proj output", "SwiGLU output", "mlp.down_proj output", "layer output (residual stream)"})
      want.push_back("forward " + std::to_string(l) + " " + t);
    for (const char* t : {"gradient of the SwiGLU output", "gradient of the mlp.gate_proj and mlp.up_proj output",
                          "gradient of the post_attention_layernorm output",
                          "gradient of the residual stream after attention", "gradient of the attention output",
                          "gradient of the attention's q", "gradient of the attention's k",
                          "gradient of the attention's v", "gradient of the q_proj, k_proj and v_proj output",
                          "gradient of the input_layernorm output", "gradient of the layer input (residual stream)"})
      want.push_back("backward " + std::to_string(l) + " " + t);
  }
  EXPECT_EQ(sites.size(), want.size());
  for (const std::string& key : want) {
    const auto it = sites.find(key);
    ASSERT_NE(it, sites.end()) << key << " is not rounded";
    if (key == "forward -1 weights") EXPECT_EQ(it->second, 0) << "init_weights leaves bf16 values";
    else EXPECT_GT(it->second, 0) << key << " is never changed by its rounding";
  }
  EXPECT_EQ(count_not_bf16(m.logits()), 0);
  for (int64_t l = 0; l < c.n_layers; ++l) EXPECT_EQ(count_not_bf16(m.forward_hidden(tok, l)), 0) << "layer " << l;
  EXPECT_GT(count_not_bf16(m.grads().flat()), 0);  // fp32 weight gradients

  Optimizer o(m.params(), OptimConfig{}, Precision::bf16);
  o.step(m.grads(), 1e-3);
  EXPECT_EQ(count_not_bf16(m.params().flat()), 0);
  EXPECT_GT(count_not_bf16(o.master().flat()), 0);
  Tensor rounded = o.master().flat().clone();
  round_to_bf16_(rounded);
  EXPECT_TRUE(all_equal(rounded, m.params().flat()));
  sites.clear();
  m.forward(tok, tgt);
  EXPECT_EQ(sites.at("forward -1 weights"), 0) << "the optimizer wrote bf16 values";
}

// ---- the optimizer's master weights --------------------------------------------------

// Weights in [1/4, 1/2), where a bf16 step is 2^-9, and a constant gradient: every AdamW
// step is lr g / (|g| + eps), i.e. lr (1 - 1e-8) here, 0.3 of half a bf16 step. Rounded
// in place, such an update is lost every time; the master adds them up, and the weights
// move by one bf16 step once the sum passes half a step (after 4 updates: 1.2 halves).
TEST(Bf16Optimizer, UpdatesBelowHalfABf16StepAccumulateInTheMaster) {
  const std::vector<ParamSpec> specs{{"w", {4, 8}}};
  ParamSet p(specs, DType::f32), g(specs, DType::f32), q(specs, DType::f32);
  for (int64_t i = 0; i < 32; ++i) {
    p.flat().data<float>()[i] = round_bf16(0.25f + float(i) / 128);
    g.flat().data<float>()[i] = i % 2 ? 1.f : -1.f;
  }
  q.flat().copy_from(p.flat());
  const Tensor start = p.flat().clone();
  OptimConfig oc;
  oc.grad_clip = 0;
  Optimizer with(p, oc, Precision::bf16), without(q, oc);  // `without`: f32 updates, then rounded as a model would
  const double lr = 0.3 * std::ldexp(1.0, -10);
  for (int s = 1; s <= 4; ++s) {
    with.step(g, lr);
    without.step(g, lr);
    round_to_bf16_(q.flat());
    EXPECT_TRUE(all_equal(q.flat(), start)) << "step " << s;
    for (int64_t i = 0; i < 32; ++i) {
      const double w0 = start.data<float>()[i], sign = i % 2 ? 1 : -1;
      // The master: s updates of lr (1 - 1e-8) in f32 (a few ulps of 2^-25 each).
      EXPECT_NEAR(with.master().flat().data<float>()[i], w0 - sign * s * lr, 8 * s * std::ldexp(1.0, -25));
      const double want = s < 4 ? w0 : w0 - sign * std::ldexp(1.0, -9);
      EXPECT_EQ(p.flat().data<float>()[i], want) << "step " << s << ", element " << i;
    }
  }
}

// With one rank, the grid's optimizer is the same arithmetic, bf16 master included.
TEST(Bf16Optimizer, ShardedOptimizerOnOneRankMatchesOptimizer) {
  const LlamaConfig c = config();
  Tensor tok, tgt;
  batch(c, tok, tgt);
  LlamaModel a(c, Precision::bf16), b(c, Precision::bf16);
  a.set_keep_logits(true);
  b.set_keep_logits(true);
  a.init_weights(5);
  b.init_weights(5);
  OptimConfig oc;
  oc.weight_decay = 0.1;
  Optimizer oa(a.params(), oc, Precision::bf16);
  auto grid = ProcessGrid::single();
  ShardedOptimizer ob(b.params(), b.grads(), oc, *grid, 1 << 20, Precision::bf16);
  for (int s = 0; s < 3; ++s) {
    for (LlamaModel* m : {&a, &b}) {
      m->grads().zero();
      m->forward(tok, tgt);
      m->backward();
    }
    EXPECT_EQ(oa.step(a.grads(), 1e-2), ob.step(1e-2));
    EXPECT_TRUE(all_equal(a.params().flat(), b.params().flat())) << "step " << s;
  }
  EXPECT_EQ(count_not_bf16(b.params().flat()), 0);
  ParamSet p64(llama_param_specs(c), DType::f64);  // bf16 values are kept in f32 tensors
  EXPECT_THROW({ Optimizer o(p64, oc, Precision::bf16); }, Error);
}

}  // namespace
}  // namespace lethe
