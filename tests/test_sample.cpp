// Sampling over a vocabulary shard (kernels/sample.h) and its one-process join
// (engine/parallel/vocab_sample.h) against the one-row reference sample_row.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "engine/core/rng.h"
#include "engine/parallel/vocab_sample.h"
#include "kernels/sample.h"
#include "tests/test_util.h"

namespace lethe {
namespace {

// Running sums of exp(x - m) in column order, in double: the op's own definition, so the
// bracket below is exact, not approximate.
std::vector<double> prefix(const float* x, int64_t V, double m) {
  std::vector<double> p(static_cast<size_t>(V));
  double acc = 0;
  for (int64_t j = 0; j < V; ++j) p[size_t(j)] = (acc += std::exp(double(x[j]) - m));
  return p;
}

TEST(Sample, InverseCdfShardReturnsTheColumnWhereTheRunningSumPassesTheTarget) {
  const int64_t N = 7, V = 37, first = 100;
  const Tensor logits = test::randn({N, V}, DType::f32, 3, 3.0);
  Tensor mx = Tensor::empty({N}, DType::f32), target = Tensor::empty({N}, DType::f64);
  const double frac[N] = {0.0, 0.3, 0.7, 0.999999, 1.5, -1.0, std::numeric_limits<double>::quiet_NaN()};
  std::vector<std::vector<double>> p;
  for (int64_t i = 0; i < N; ++i) {
    const float* x = logits.data<float>() + i * V;
    mx.data<float>()[i] = *std::max_element(x, x + V);
    p.push_back(prefix(x, V, mx.data<float>()[i]));
    target.data<double>()[i] = frac[i] * p.back().back();
  }
  Tensor arg = Tensor::empty({N}, DType::i32);
  ops::inverse_cdf_shard(logits, mx, target, first, arg);
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t j = arg.data<int32_t>()[i] - first;
    ASSERT_GE(j, 0) << "row " << i;
    ASSERT_LT(j, V) << "row " << i;
    const double t = target.data<double>()[i];
    EXPECT_GT(p[size_t(i)][size_t(j)], t) << "row " << i;
    if (j > 0) {
      EXPECT_LE(p[size_t(i)][size_t(j - 1)], t) << "row " << i;
    }
  }
  EXPECT_EQ(arg.data<int32_t>()[0], first);  // target 0: the first column with mass
  EXPECT_EQ(arg.data<int32_t>()[4], first + V - 1);  // past the total: the last column
  EXPECT_EQ(arg.data<int32_t>()[5], -1);
  EXPECT_EQ(arg.data<int32_t>()[6], -1);
}

TEST(Sample, TopkShardIsTheSortedPrefixWithTiesBySmallerId) {
  const int64_t N = 5, V = 29, first = 58;
  Tensor logits = test::randn({N, V}, DType::f32, 4, 2.0);
  float* x = logits.data<float>();
  for (int64_t i = 0; i < N * V; ++i) x[i] = std::round(x[i] * 2) / 2;  // many ties
  x[1 * V + 3] = std::numeric_limits<float>::quiet_NaN();
  x[2 * V + 7] = std::numeric_limits<float>::infinity();
  for (const int64_t K : {int64_t(1), int64_t(6), V, V + 4}) {
    SCOPED_TRACE(K);
    Tensor vals = Tensor::empty({N, K}, DType::f32), ids = Tensor::empty({N, K}, DType::i32);
    ops::topk_shard(logits, first, vals, ids);
    for (int64_t i = 0; i < N; ++i) {
      std::vector<int32_t> order(static_cast<size_t>(V));
      std::iota(order.begin(), order.end(), 0);
      auto key = [&](int32_t j) { return std::isnan(x[i * V + j]) ? -INFINITY : x[i * V + j]; };
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
      for (int64_t r = 0; r < K; ++r) {
        const float v = vals.data<float>()[i * K + r];
        const int32_t id = ids.data<int32_t>()[i * K + r];
        if (r >= V) {
          EXPECT_EQ(v, -INFINITY);
          EXPECT_EQ(id, -1);
          continue;
        }
        EXPECT_EQ(id, first + order[size_t(r)]) << "row " << i << " rank " << r;
        EXPECT_EQ(v, key(order[size_t(r)])) << "row " << i << " rank " << r;
      }
    }
  }
}

// Rows of V logits on a grid of 1/4 (ties everywhere), one row whose k-th value is shared
// by 24 ids (more than a list of k + 16 holds for k < 8), one with a single dominant id.
Tensor tie_heavy_logits(int64_t N, int64_t V, uint64_t seed) {
  Tensor t = test::randn({N, V}, DType::f32, seed, 2.0);
  float* x = t.data<float>();
  for (int64_t i = 0; i < N * V; ++i) x[i] = std::round(x[i] * 4) / 4;
  for (int64_t j = 0; j < V; ++j) x[1 * V + j] = j % 5 == 0 ? 5.0f : (j < 90 ? 1.0f : -2.0f);
  x[2 * V + 11] = 30.0f;
  return t;
}

std::vector<SampleFilter> filters() {
  return {{0, 1.0}, {3, 1.0}, {5, 0.6}, {20, 1.0}, {0, 0.5}, {1, 1.0}, {500, 1.0}};
}

TEST(Sample, OneRankDrawsExactlyWhatTheWholeRowDraws) {
  const int64_t N = 6, V = 120;
  const Tensor logits = tie_heavy_logits(N, V, 5);
  auto local = make_local_communicator();
  const VocabShard vs{0, V, V};
  const Philox rng(9, 0);
  for (const SampleFilter& f : filters()) {
    SCOPED_TRACE(::testing::Message() << "top_k " << f.top_k << " top_p " << f.top_p);
    for (int rep = 0; rep < 40; ++rep) {
      std::vector<double> u(static_cast<size_t>(N));
      for (int64_t i = 0; i < N; ++i) u[size_t(i)] = rng.uniform(uint64_t(rep * N + i));
      u[3] = -1;  // an ignored row
      Tensor out = Tensor::empty({N}, DType::i32);
      vocab_parallel_sample(logits, u, f, vs, out, *local, "test");
      std::vector<int32_t> idx;
      std::vector<double> e;
      for (int64_t i = 0; i < N; ++i) {
        if (i == 3) {
          EXPECT_EQ(out.data<int32_t>()[i], -1);
          continue;
        }
        const auto row = test::values(logits.slice_rows(i, i + 1));
        EXPECT_EQ(out.data<int32_t>()[i], sample_row(row.data(), V, u[size_t(i)], f, idx, e)) << "row " << i;
      }
      EXPECT_EQ(out.data<int32_t>()[2], 11);  // probability 1 - 1e-11
    }
  }
}

TEST(Sample, ANonFiniteRowIsNamed) {
  Tensor logits = test::randn({4, 10}, DType::f32, 6);
  logits.data<float>()[2 * 10 + 4] = std::numeric_limits<float>::quiet_NaN();
  auto local = make_local_communicator();
  Tensor out = Tensor::empty({4}, DType::i32);
  try {
    vocab_parallel_sample(logits, {0.5, 0.5, 0.5, 0.5}, SampleFilter{}, {0, 10, 10}, out, *local, "random_labels");
    FAIL() << "a NaN row was sampled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("random_labels: the logits of row 2 are not finite"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lethe
