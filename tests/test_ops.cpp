// Every CPU op against a naive float64 reference (forward, f32 kernel) and every backward
// against central finite differences (f64 kernel). Tolerances:
//   f32 forward vs f64 reference: scaled max error <= 1e-5 (float32 rounding over short sums)
//   f64 backward vs finite differences (h = 1e-6): scaled max error <= 1e-7
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"
#include "kernels/optim.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;
constexpr double kFwdTol = 1e-5, kFdTol = 1e-7;

// ---- naive references (float64, straight from the definitions) --------------------
Tensor ref_linear(const Tensor& x, const Tensor& w) {
  const int64_t N = x.dim(0), I = x.dim(1), O = w.dim(0);
  Tensor y = Tensor::zeros({N, O}, DType::f64);
  auto X = values(x), W = values(w);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) {
      double s = 0;
      for (int64_t i = 0; i < I; ++i) s += X[n * I + i] * W[o * I + i];
      y.data<double>()[n * O + o] = s;
    }
  return y;
}

Tensor ref_rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  const int64_t N = x.dim(0), C = x.dim(1);
  auto X = values(x), W = values(w);
  Tensor y = Tensor::zeros({N, C}, DType::f64);
  for (int64_t n = 0; n < N; ++n) {
    double ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += X[n * C + c] * X[n * C + c] / double(C);
    for (int64_t c = 0; c < C; ++c) y.data<double>()[n * C + c] = W[c] * X[n * C + c] / std::sqrt(ms + eps);
  }
  return y;
}

// rotate_half form: y = x * cos(p f) + rotate_half(x) * sin(p f), rotate_half(x) = [-x2, x1].
Tensor ref_rope(const Tensor& x, const std::vector<double>& inv_freq) {
  const int64_t B = x.dim(0), T = x.dim(1), H = x.dim(2), D = x.dim(3);
  auto X = values(x);
  Tensor y = Tensor::zeros(x.shape(), DType::f64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < D; ++i) {
          const int64_t o = ((b * T + t) * H + h) * D;
          const double ang = double(t) * inv_freq[size_t(i % (D / 2))];
          const double rot = i < D / 2 ? -X[o + i + D / 2] : X[o + i - D / 2];
          y.data<double>()[o + i] = X[o + i] * std::cos(ang) + rot * std::sin(ang);
        }
  return y;
}

// Materialises the full score matrix with the causal mask, kv heads repeated per group.
Tensor ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  const int64_t B = q.dim(0), T = q.dim(1), H = q.dim(2), KV = k.dim(2), D = q.dim(3);
  auto Q = values(q), K = values(k), V = values(v);
  Tensor o = Tensor::zeros(q.shape(), DType::f64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / (H / KV);
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(size_t(T), -INFINITY);
        double m = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (int64_t c = 0; c < D; ++c) d += Q[((b * T + i) * H + h) * D + c] * K[((b * T + j) * KV + kh) * D + c];
          s[j] = d * scale;
          m = std::max(m, s[j]);
        }
        double z = 0;
        for (int64_t j = 0; j <= i; ++j) z += std::exp(s[j] - m);
        for (int64_t c = 0; c < D; ++c) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += std::exp(s[j] - m) / z * V[((b * T + j) * KV + kh) * D + c];
          o.data<double>()[((b * T + i) * H + h) * D + c] = acc;
        }
      }
    }
  return o;
}

// ---- linear --------------------------------------------------------------------------
TEST(Linear, ForwardMatchesReference) {
  Tensor x = randn({7, 13}, DType::f32, 1), w = randn({5, 13}, DType::f32, 2), y = Tensor::zeros({7, 5}, DType::f32);
  ops::linear_forward(x, w, y);
  EXPECT_LE(scaled_err(y, ref_linear(x, w)), kFwdTol);
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  Tensor x = randn({4, 6}, DType::f64, 3), w = randn({5, 6}, DType::f64, 4), r = randn({4, 5}, DType::f64, 5);
  Tensor y = Tensor::zeros({4, 5}, DType::f64);
  auto loss = [&] { ops::linear_forward(x, w, y); return dot(y, r); };
  Tensor dx = Tensor::zeros({4, 6}, DType::f64), dw = Tensor::zeros({5, 6}, DType::f64);
  ops::linear_backward(r, x, w, &dx, false, &dw);
  EXPECT_LE(scaled_err(dx, elementwise_fd(x, loss)), kFdTol);
  EXPECT_LE(scaled_err(dw, elementwise_fd(w, loss)), kFdTol);
  // Accumulation: dx += and dw += on a second call double them.
  Tensor dx2 = dx.clone(), dw2 = dw.clone();
  ops::linear_backward(r, x, w, &dx2, true, &dw2);
  ops::scale_(dx, 2.0);
  ops::scale_(dw, 2.0);
  EXPECT_LE(scaled_err(dx2, dx), 1e-15);
  EXPECT_LE(scaled_err(dw2, dw), 1e-15);
}

TEST(Linear, ShapeMismatchIsAnError) {
  Tensor x = randn({2, 3}, DType::f32, 1), w = randn({4, 5}, DType::f32, 2), y = Tensor::zeros({2, 4}, DType::f32);
  EXPECT_THROW(ops::linear_forward(x, w, y), Error);
}

// ---- embedding -----------------------------------------------------------------------
TEST(Embedding, ForwardGathersRows) {
  Tensor table = randn({10, 4}, DType::f32, 6), ids = Tensor::from<int32_t>({5}, {3, 0, 9, 3, 7});
  Tensor out = Tensor::zeros({5, 4}, DType::f32);
  ops::embedding_forward(ids, table, out);
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t c = 0; c < 4; ++c)
      EXPECT_EQ(out.data<float>()[i * 4 + c], table.data<float>()[ids.data<int32_t>()[i] * 4 + c]);
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  Tensor table = randn({6, 3}, DType::f64, 7), ids = Tensor::from<int32_t>({5}, {1, 4, 1, 0, 1});
  Tensor out = Tensor::zeros({5, 3}, DType::f64), r = randn({5, 3}, DType::f64, 8);
  auto loss = [&] { ops::embedding_forward(ids, table, out); return dot(out, r); };
  Tensor g = Tensor::zeros({6, 3}, DType::f64);
  ops::embedding_backward(ids, r, g);
  EXPECT_LE(scaled_err(g, elementwise_fd(table, loss)), kFdTol);
}

TEST(Embedding, OutOfVocabularyIdIsAnError) {
  Tensor table = randn({6, 3}, DType::f32, 7), ids = Tensor::from<int32_t>({2}, {1, 6});
  Tensor out = Tensor::zeros({2, 3}, DType::f32);
  try {
    ops::embedding_forward(ids, table, out);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 6"), std::string::npos) << e.what();
  }
}

// ---- rmsnorm -------------------------------------------------------------------------
TEST(RMSNorm, ForwardMatchesReference) {
  Tensor x = randn({9, 33}, DType::f32, 9), w = randn({33}, DType::f32, 10, 0.1, 1.0);
  Tensor y = Tensor::zeros({9, 33}, DType::f32), r = Tensor::zeros({9}, DType::f32);
  ops::rmsnorm_forward(x, w, 1e-5, y, r);
  EXPECT_LE(scaled_err(y, ref_rmsnorm(x, w, 1e-5)), kFwdTol);
}

TEST(RMSNorm, BackwardMatchesFiniteDifferences) {
  Tensor x = randn({4, 8}, DType::f64, 11), w = randn({8}, DType::f64, 12, 0.1, 1.0), r = randn({4, 8}, DType::f64, 13);
  Tensor y = Tensor::zeros({4, 8}, DType::f64), rstd = Tensor::zeros({4}, DType::f64);
  auto loss = [&] { ops::rmsnorm_forward(x, w, 1e-5, y, rstd); return dot(y, r); };
  loss();
  Tensor dx = Tensor::zeros({4, 8}, DType::f64), dw = Tensor::zeros({8}, DType::f64);
  ops::rmsnorm_backward(r, x, w, rstd, dx, false, dw);
  EXPECT_LE(scaled_err(dx, elementwise_fd(x, loss)), kFdTol);
  EXPECT_LE(scaled_err(dw, elementwise_fd(w, loss)), kFdTol);
}

// The fused residual add + norm is the unfused sequence exactly (bit for bit: the same
// ops in the same order), and under bf16 the norm reads the rounded stream; the sum goes
// to its own tensor or over x, alike.
TEST(RMSNorm, ResidualFusedIsAddThenStoreThenNorm) {
  for (const Precision p : {Precision::f32, Precision::bf16}) {
    const Tensor x0 = randn({9, 33}, DType::f32, 14), delta = randn({9, 33}, DType::f32, 15, 0.3);
    const Tensor w = randn({33}, DType::f32, 16, 0.1, 1.0);
    Tensor res = Tensor::zeros({9, 33}, DType::f32), y = Tensor::zeros({9, 33}, DType::f32),
           r = Tensor::zeros({9}, DType::f32);
    const int64_t changed = ops::residual_rmsnorm_forward(x0, delta, res, w, 1e-5, y, r, p);
    Tensor in_place = x0.clone(), y2 = Tensor::zeros({9, 33}, DType::f32), r2 = Tensor::zeros({9}, DType::f32);
    EXPECT_EQ(ops::residual_rmsnorm_forward(in_place, delta, in_place, w, 1e-5, y2, r2, p), changed);
    EXPECT_EQ(values(in_place), values(res)) << precision_name(p);
    EXPECT_EQ(values(y2), values(y)) << precision_name(p);

    Tensor ref = x0.clone(), yr = Tensor::zeros({9, 33}, DType::f32), rr = Tensor::zeros({9}, DType::f32);
    ops::add_(ref, delta);
    const int64_t ref_changed = p == Precision::bf16 ? round_to_bf16_(ref) : 0;
    ops::rmsnorm_forward(ref, w, 1e-5, yr, rr);
    EXPECT_EQ(values(res), values(ref)) << precision_name(p);
    EXPECT_EQ(values(y), values(yr)) << precision_name(p);
    EXPECT_EQ(values(r), values(rr)) << precision_name(p);
    EXPECT_EQ(changed, ref_changed) << precision_name(p);
    if (p == Precision::bf16) {
      EXPECT_GT(changed, 0);  // random sums are rarely bf16 values: the rounding ran
      EXPECT_EQ(count_not_bf16(res), 0);
    }
  }
}

// ---- rope ----------------------------------------------------------------------------
TEST(RoPE, InvFreqPlainAndLinear) {
  auto f = ops::rope_inv_freq(8, 10000.0, {});
  ASSERT_EQ(f.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(f[size_t(i)], std::pow(10000.0, -2.0 * i / 8.0));
  ops::RopeScaling lin;
  lin.type = "linear";
  lin.factor = 4;
  auto g = ops::rope_inv_freq(8, 10000.0, lin);
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(g[size_t(i)], f[size_t(i)] / 4);
}

TEST(RoPE, Llama3ScalingKeepsHighDividesLowBlendsMiddle) {
  ops::RopeScaling s;
  s.type = "llama3";
  s.factor = 8;
  s.low_freq_factor = 1;
  s.high_freq_factor = 4;
  s.original_max_position_embeddings = 8192;
  const auto base = ops::rope_inv_freq(128, 500000.0, {}), scaled = ops::rope_inv_freq(128, 500000.0, s);
  int kept = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    const double wavelen = 2 * M_PI / base[i];
    if (wavelen < 8192.0 / 4) {
      EXPECT_DOUBLE_EQ(scaled[i], base[i]);
      ++kept;
    } else if (wavelen > 8192.0) {
      EXPECT_DOUBLE_EQ(scaled[i], base[i] / 8);
      ++divided;
    } else {
      EXPECT_GT(scaled[i], base[i] / 8);
      EXPECT_LT(scaled[i], base[i]);
      ++blended;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

TEST(RoPE, ForwardMatchesReference) {
  const auto f = ops::rope_inv_freq(16, 10000.0, {});
  Tensor x = randn({2, 7, 3, 16}, DType::f32, 14), y = Tensor::zeros(x.shape(), DType::f32), c, s;
  ops::rope_tables(f, 7, DType::f32, c, s);
  ops::rope_forward(x, c, s, y);
  EXPECT_LE(scaled_err(y, ref_rope(x, f)), kFwdTol);
  // Position 0 is the identity.
  for (int64_t i = 0; i < 3 * 16; ++i) EXPECT_EQ(y.data<float>()[i], x.data<float>()[i]);
}

TEST(RoPE, BackwardMatchesFiniteDifferences) {
  const auto f = ops::rope_inv_freq(8, 10000.0, {});
  Tensor x = randn({1, 5, 2, 8}, DType::f64, 15), r = randn(x.shape(), DType::f64, 16), y = Tensor::zeros(x.shape(), DType::f64);
  Tensor c, s;
  ops::rope_tables(f, 5, DType::f64, c, s);
  auto loss = [&] { ops::rope_forward(x, c, s, y); return dot(y, r); };
  Tensor dx = Tensor::zeros(x.shape(), DType::f64);
  ops::rope_backward(r, c, s, dx);
  EXPECT_LE(scaled_err(dx, elementwise_fd(x, loss)), kFdTol);
}

// The fused q/k/v projection's output [B*T, (H + 2 KV) D] (each token: H q heads, KV k
// heads, KV v heads). The split is rope_forward on q and k and a copy of v, bit for bit;
// the merge is its transpose: <split(x), y> = <x, merge(y)>.
TEST(RoPE, QkvSplitIsRopeOnQAndKAndACopyOfV) {
  const int64_t B = 2, T = 5, H = 4, KV = 2, D = 8, W = (H + 2 * KV) * D;
  Tensor qkv = randn({B * T, W}, DType::f32, 40), c, s;
  ops::rope_tables(ops::rope_inv_freq(D, 10000.0, {}), T + 3, DType::f32, c, s);  // a longer table, as decoding has
  Tensor q = Tensor::zeros({B, T, H, D}, DType::f32), k = Tensor::zeros({B, T, KV, D}, DType::f32), v = k.clone();
  ops::qkv_split_rope(qkv, c, s, q, k, v);
  Tensor q0 = Tensor::zeros(q.shape(), DType::f32), k0 = Tensor::zeros(k.shape(), DType::f32), v0 = k0.clone();
  for (int64_t r = 0; r < B * T; ++r)
    for (int64_t i = 0; i < W; ++i) {
      const float x = qkv.data<float>()[r * W + i];
      if (i < H * D) q0.data<float>()[r * H * D + i] = x;
      else if (i < (H + KV) * D) k0.data<float>()[r * KV * D + i - H * D] = x;
      else v0.data<float>()[r * KV * D + i - (H + KV) * D] = x;
    }
  ops::rope_forward(q0, c, s, q0);
  ops::rope_forward(k0, c, s, k0);
  EXPECT_EQ(values(q), values(q0));
  EXPECT_EQ(values(k), values(k0));
  EXPECT_EQ(values(v), values(v0));
}

TEST(RoPE, QkvMergeIsTheSplitsTranspose) {
  const int64_t B = 2, T = 6, H = 3, KV = 1, D = 16, W = (H + 2 * KV) * D;
  Tensor x = randn({B * T, W}, DType::f64, 41), c, s;
  ops::rope_tables(ops::rope_inv_freq(D, 10000.0, {}), T, DType::f64, c, s);
  Tensor dq = randn({B, T, H, D}, DType::f64, 42), dk = randn({B, T, KV, D}, DType::f64, 43),
         dv = randn({B, T, KV, D}, DType::f64, 44);
  Tensor q = Tensor::zeros(dq.shape(), DType::f64), k = Tensor::zeros(dk.shape(), DType::f64), v = k.clone();
  Tensor dx = Tensor::zeros(x.shape(), DType::f64);
  ops::qkv_split_rope(x, c, s, q, k, v);
  ops::qkv_merge_rope_backward(dq, dk, dv, c, s, dx);
  const double lhs = dot(q, dq) + dot(k, dk) + dot(v, dv), rhs = dot(x, dx);
  // Each side sums n = B T W products (and each rotated value adds two roundings): a
  // recursive f64 sum errs by at most (n + 2) 2^-53 sum |terms| per side; sum |terms| is
  // bounded by |x| |dx| and |(q, k, v)| |(dq, dk, dv)| (Cauchy-Schwarz).
  const double n = double(B * T * W), u = std::ldexp(1.0, -53);
  const double mags = std::sqrt(dot(x, x) * dot(dx, dx)) +
                      std::sqrt((dot(q, q) + dot(k, k) + dot(v, v)) * (dot(dq, dq) + dot(dk, dk) + dot(dv, dv)));
  EXPECT_NEAR(lhs, rhs, (n + 2) * u * mags);
  // And its parts are rope_backward's: dq's block of a row is rope_backward(dq)'s row.
  Tensor dq0 = Tensor::zeros(dq.shape(), DType::f64);
  ops::rope_backward(dq, c, s, dq0);
  for (int64_t r = 0; r < B * T; ++r)
    for (int64_t i = 0; i < H * D; ++i) ASSERT_EQ(dx.data<double>()[r * W + i], dq0.data<double>()[r * H * D + i]);
  for (int64_t r = 0; r < B * T; ++r)
    for (int64_t i = 0; i < KV * D; ++i)
      ASSERT_EQ(dx.data<double>()[r * W + (H + KV) * D + i], dv.data<double>()[r * KV * D + i]);
}

TEST(RoPE, QkvShapesOutsideTheFusedLayoutAreRefusedByName) {
  Tensor c, s;
  ops::rope_tables(ops::rope_inv_freq(8, 10000.0, {}), 4, DType::f32, c, s);
  Tensor q = Tensor::zeros({1, 4, 2, 8}, DType::f32), k = Tensor::zeros({1, 4, 1, 8}, DType::f32), v = k.clone();
  Tensor wrong = Tensor::zeros({4, 24}, DType::f32);  // (2 + 2 * 1) * 8 = 32 columns expected
  try {
    ops::qkv_split_rope(wrong, c, s, q, k, v);
    FAIL() << "a [4, 24] qkv was accepted for 2 q heads and 1 kv head of 8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qkv_split_rope"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("qkv"), std::string::npos) << e.what();
  }
  Tensor long_t = Tensor::zeros({1, 5, 2, 8}, DType::f32), kk = Tensor::zeros({1, 5, 1, 8}, DType::f32), vv = kk.clone();
  Tensor fused = Tensor::zeros({5, 32}, DType::f32);
  EXPECT_THROW(ops::qkv_split_rope(fused, c, s, long_t, kk, vv), Error);  // the table covers 4 positions
  EXPECT_THROW(ops::qkv_merge_rope_backward(q, k, k, c, s, wrong), Error);
}

// ---- attention -----------------------------------------------------------------------
struct AttnCase {
  int64_t B, T, H, KV, D;
};
class Attention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(Attention, ForwardMatchesReference) {
  const auto p = GetParam();
  Tensor q = randn({p.B, p.T, p.H, p.D}, DType::f32, 17), k = randn({p.B, p.T, p.KV, p.D}, DType::f32, 18),
         v = randn({p.B, p.T, p.KV, p.D}, DType::f32, 19);
  Tensor o = Tensor::zeros(q.shape(), DType::f32), lse = Tensor::zeros({p.B, p.H, p.T}, DType::f32);
  const double scale = 1.0 / std::sqrt(double(p.D));
  ops::attention_forward(q, k, v, scale, o, lse);
  EXPECT_LE(scaled_err(o, ref_attention(q, k, v, scale)), kFwdTol);
}

TEST_P(Attention, BackwardMatchesFiniteDifferences) {
  const auto p = GetParam();
  Tensor q = randn({p.B, p.T, p.H, p.D}, DType::f64, 20), k = randn({p.B, p.T, p.KV, p.D}, DType::f64, 21),
         v = randn({p.B, p.T, p.KV, p.D}, DType::f64, 22), r = randn(q.shape(), DType::f64, 23);
  Tensor o = Tensor::zeros(q.shape(), DType::f64), lse = Tensor::zeros({p.B, p.H, p.T}, DType::f64);
  const double scale = 1.0 / std::sqrt(double(p.D));
  auto loss = [&] { ops::attention_forward(q, k, v, scale, o, lse); return dot(o, r); };
  loss();
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64),
         dv = Tensor::zeros(v.shape(), DType::f64);
  ops::attention_backward(r, q, k, v, o, lse, scale, dq, dk, dv);
  EXPECT_LE(scaled_err(dq, elementwise_fd(q, loss)), kFdTol);
  EXPECT_LE(scaled_err(dk, elementwise_fd(k, loss)), kFdTol);
  EXPECT_LE(scaled_err(dv, elementwise_fd(v, loss)), kFdTol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Attention,
                         ::testing::Values(AttnCase{1, 5, 2, 2, 4},    // multi-head
                                           AttnCase{2, 6, 4, 2, 4},    // GQA 2:1
                                           AttnCase{1, 7, 6, 1, 8},    // multi-query
                                           AttnCase{2, 139, 2, 1, 4})); // spans 3 query blocks

TEST(AttentionErrors, HeadsNotMultipleOfKvHeads) {
  Tensor q = randn({1, 3, 3, 4}, DType::f32, 1), k = randn({1, 3, 2, 4}, DType::f32, 2);
  Tensor o = Tensor::zeros(q.shape(), DType::f32), lse = Tensor::zeros({1, 3, 3}, DType::f32);
  EXPECT_THROW(ops::attention_forward(q, k, k, 0.5, o, lse), Error);
}

// ---- swiglu --------------------------------------------------------------------------
// gu [N, 2F] is the fused gate/up projection's output: row r holds g[r, :] then u[r, :].
TEST(SwiGLU, ForwardMatchesReference) {
  const int64_t N = 5, F = 11;
  Tensor gu = randn({N, 2 * F}, DType::f32, 24, 2.0), a = Tensor::zeros({N, F}, DType::f32);
  ops::swiglu_forward(gu, a);
  Tensor ref = Tensor::zeros({N, F}, DType::f64);
  auto GU = values(gu);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t i = 0; i < F; ++i) {
      const double g = GU[size_t(r * 2 * F + i)], u = GU[size_t(r * 2 * F + F + i)];
      ref.data<double>()[r * F + i] = g / (1 + std::exp(-g)) * u;
    }
  EXPECT_LE(scaled_err(a, ref), kFwdTol);
}

TEST(SwiGLU, BackwardMatchesFiniteDifferences) {
  const int64_t N = 3, F = 7;
  Tensor gu = randn({N, 2 * F}, DType::f64, 26, 2.0), r = randn({N, F}, DType::f64, 28);
  Tensor a = Tensor::zeros({N, F}, DType::f64);
  auto loss = [&] { ops::swiglu_forward(gu, a); return dot(a, r); };
  Tensor dgu = Tensor::zeros({N, 2 * F}, DType::f64);
  ops::swiglu_backward(r, gu, dgu);
  EXPECT_LE(scaled_err(dgu, elementwise_fd(gu, loss)), kFdTol);
}

TEST(SwiGLU, ShapesOutsideTheFusedLayoutAreRefusedByName) {
  Tensor gu = Tensor::zeros({3, 10}, DType::f32), a = Tensor::zeros({3, 4}, DType::f32);
  try {
    ops::swiglu_forward(gu, a);
    FAIL() << "a [3, 4] with gu [3, 10] was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gu (gate then up in each row)"), std::string::npos) << e.what();
  }
  Tensor da = Tensor::zeros({3, 5}, DType::f32), dgu = Tensor::zeros({3, 5}, DType::f32);
  EXPECT_THROW(ops::swiglu_backward(da, gu, dgu), Error);
}

// ---- cross-entropy -------------------------------------------------------------------
TEST(CrossEntropy, ForwardMatchesReferenceWithWeightsAndMask) {
  const int64_t N = 6, V = 17;
  Tensor x = randn({N, V}, DType::f32, 29, 3.0);
  Tensor t = Tensor::from<int32_t>({N}, {3, ops::kIgnoreIndex, 16, 0, 5, 5});
  Tensor w = Tensor::from<float>({N}, {0.5f, 1.0f, -0.25f, 2.0f, 1.0f, 0.0f});  // negative = ascent
  Tensor lp = Tensor::zeros({N}, DType::f32), lse = Tensor::zeros({N}, DType::f32);
  const double loss = ops::cross_entropy_forward(x, t, w, lp, lse);
  auto X = values(x);
  double ref_loss = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t ti = t.data<int32_t>()[i];
    double z = 0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(X[i * V + j]);
    const double ref_lp = ti == ops::kIgnoreIndex ? 0.0 : X[i * V + ti] - std::log(z);
    EXPECT_NEAR(lp.data<float>()[i], ref_lp, 1e-5) << "row " << i;
    if (ti != ops::kIgnoreIndex) ref_loss -= w.data<float>()[i] * ref_lp;
  }
  EXPECT_NEAR(loss, ref_loss, 1e-5 * std::abs(ref_loss));
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  const int64_t N = 4, V = 9;
  Tensor x = randn({N, V}, DType::f64, 30, 2.0);
  Tensor t = Tensor::from<int32_t>({N}, {1, 8, ops::kIgnoreIndex, 0});
  Tensor w = Tensor::from<double>({N}, {0.7, -1.3, 1.0, 0.2});
  Tensor lp = Tensor::zeros({N}, DType::f64), lse = Tensor::zeros({N}, DType::f64);
  auto loss = [&] { return ops::cross_entropy_forward(x, t, w, lp, lse); };
  loss();
  Tensor g = Tensor::zeros({N, V}, DType::f64);
  ops::cross_entropy_backward(x, t, w, lse, 1.0, g);
  EXPECT_LE(scaled_err(g, elementwise_fd(x, loss)), kFdTol);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(g.data<double>()[2 * V + j], 0.0) << "masked row has gradient";
}

TEST(CrossEntropy, TargetOutsideVocabularyIsAnError) {
  Tensor x = randn({2, 5}, DType::f32, 31), t = Tensor::from<int32_t>({2}, {1, 5}), w = Tensor::from<float>({2}, {1, 1});
  Tensor lp = Tensor::zeros({2}, DType::f32), lse = Tensor::zeros({2}, DType::f32);
  EXPECT_THROW(ops::cross_entropy_forward(x, t, w, lp, lse), Error);
}

// ---- optimizer kernels ---------------------------------------------------------------
TEST(AdamW, FirstStepIsSignedLearningRateAfterDecay) {
  // Step 1: m_hat = g, v_hat = g^2, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps).
  Tensor p = Tensor::from<double>({3}, {1.0, -2.0, 0.5}), g = Tensor::from<double>({3}, {0.3, -4.0, 1e-3});
  Tensor m = Tensor::zeros({3}, DType::f64), v = Tensor::zeros({3}, DType::f64);
  const double lr = 0.1, wd = 0.01, eps = 1e-8;
  ops::adamw_update(p, g, m, v, {lr, 0.9, 0.95, eps, wd, 1});
  const double p0[3] = {1.0, -2.0, 0.5}, g0[3] = {0.3, -4.0, 1e-3};
  for (int i = 0; i < 3; ++i)
    EXPECT_NEAR(p.data<double>()[i], p0[i] * (1 - lr * wd) - lr * g0[i] / (std::abs(g0[i]) + eps), 1e-12);
}

TEST(AdamW, SecondStepMatchesClosedForm) {
  const double lr = 0.05, b1 = 0.8, b2 = 0.9, eps = 1e-6, wd = 0.2, g1 = 0.5, g2 = -0.25;
  Tensor p = Tensor::from<double>({1}, {1.5}), m = Tensor::zeros({1}, DType::f64), v = Tensor::zeros({1}, DType::f64);
  ops::adamw_update(p, Tensor::from<double>({1}, {g1}), m, v, {lr, b1, b2, eps, wd, 1});
  ops::adamw_update(p, Tensor::from<double>({1}, {g2}), m, v, {lr, b1, b2, eps, wd, 2});
  double P = 1.5, M = 0, Vv = 0;
  for (int s = 1; s <= 2; ++s) {
    const double g = s == 1 ? g1 : g2;
    P *= 1 - lr * wd;
    M = b1 * M + (1 - b1) * g;
    Vv = b2 * Vv + (1 - b2) * g * g;
    P -= lr * (M / (1 - std::pow(b1, s))) / (std::sqrt(Vv / (1 - std::pow(b2, s))) + eps);
  }
  EXPECT_NEAR(p.data<double>()[0], P, 1e-12);
}

TEST(SGD, MomentumAndWeightDecayMatchTorchSemantics) {
  Tensor p = Tensor::from<double>({1}, {2.0}), buf = Tensor::zeros({1}, DType::f64);
  const double lr = 0.1, mu = 0.9, wd = 0.01;
  ops::sgd_update(p, Tensor::from<double>({1}, {1.0}), buf, {lr, mu, wd, true});
  double P = 2.0, B = 1.0 + wd * 2.0;
  P -= lr * B;
  EXPECT_NEAR(p.data<double>()[0], P, 1e-14);
  ops::sgd_update(p, Tensor::from<double>({1}, {-0.5}), buf, {lr, mu, wd, false});
  B = mu * B + (-0.5 + wd * P);
  P -= lr * B;
  EXPECT_NEAR(p.data<double>()[0], P, 1e-14);
}

TEST(Reductions, SumSquaresAndScale) {
  Tensor x = randn({100003}, DType::f32, 32);  // crosses the fixed reduction block size
  double ref = 0;
  for (double v : values(x)) ref += v * v;
  EXPECT_NEAR(ops::sum_squares(x), ref, 1e-9 * ref);
  ops::scale_(x, 0.5);
  EXPECT_NEAR(ops::sum_squares(x), ref / 4, 1e-9 * ref);
}

// The gradient norm's batched form: each tensor's sum exactly as sum_squares gives it (the
// norm's value must not depend on which form the optimizer uses), an empty tensor 0, and
// tensors on different devices refused by name.
TEST(Reductions, SumSquaresEachIsSumSquaresOfEach) {
  const std::vector<Tensor> xs{randn({100003}, DType::f32, 33), Tensor::zeros({0}, DType::f32),
                               randn({7, 5}, DType::f32, 34)};
  const std::vector<double> each = ops::sum_squares_each(xs);
  ASSERT_EQ(each.size(), 3u);
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_EQ(each[i], ops::sum_squares(xs[i])) << "tensor " << i;
  EXPECT_EQ(each[1], 0.0);
  EXPECT_TRUE(ops::sum_squares_each({}).empty());
}

// UNDIAL's lowering on a shard [first, first + Vr): only rows whose target falls in it
// change, by exactly fl(x + fl(value)) in the tensor's own arithmetic.
TEST(CrossEntropyShard, AddAtTargetsTouchesOnlyThisShardsTargets) {
  const int64_t N = 5, Vr = 4, first = 10;
  const std::vector<int32_t> t = {11, ops::kIgnoreIndex, 9, 13, 14};  // in, ignored, before, last, after
  for (const DType dt : {DType::f32, DType::f64}) {
    Tensor x = randn({N, Vr}, dt, 7), before = x.clone();
    ops::add_at_targets_(x, Tensor::from<int32_t>({N}, t), first, -2.5);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < Vr; ++c) {
        const bool hit = (i == 0 && c == 1) || (i == 3 && c == 3);
        if (dt == DType::f32) {
          const float b = before.data<float>()[i * Vr + c];
          EXPECT_EQ(x.data<float>()[i * Vr + c], hit ? b + -2.5f : b) << i << "," << c;
        } else {
          const double b = before.data<double>()[i * Vr + c];
          EXPECT_EQ(x.data<double>()[i * Vr + c], hit ? b - 2.5 : b) << i << "," << c;
        }
      }
  }
  Tensor x = Tensor::zeros({N, Vr}, DType::f32);
  EXPECT_THROW(ops::add_at_targets_(x, Tensor::from<int32_t>({N - 1}, {11, 11, 11, 11}), first, 1.0), Error);
}

}  // namespace
}  // namespace lethe
