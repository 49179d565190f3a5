// TOFU's metrics: the two-sample Kolmogorov-Smirnov test behind forget quality (against an
// enumeration of every ordering, and scipy's exact values) and the truth ratio by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/core/error.h"
#include "engine/eval/ks_test.h"
#include "engine/eval/truth_ratio.h"

namespace lethe {
namespace {

// The DP sums n*m positive shares in double: relative error a few hundred ulps at most.
constexpr double kRel = 1e-10;

// Every one of the C(n+m, n) orderings of n a's and m b's, equally likely under H0: the
// share whose statistic reaches the observed one.
double brute_force_p(int n, int m, double d_obs) {
  std::vector<int> order(size_t(n + m), 1);
  std::fill(order.begin(), order.begin() + n, 0);
  int64_t reach = 0, total = 0;
  do {
    int i = 0, j = 0;
    double d = 0;
    for (const int x : order) {
      (x == 0 ? i : j)++;
      d = std::max(d, std::abs(double(i) / n - double(j) / m));
    }
    reach += d >= d_obs - 1e-12;
    ++total;
  } while (std::next_permutation(order.begin(), order.end()));
  return double(reach) / double(total);
}

TEST(KsTest, ExactPValueIsTheShareOfOrderingsReachingTheStatistic) {
  for (const auto& [n, m] : {std::pair{3, 4}, std::pair{5, 5}, std::pair{6, 4}, std::pair{1, 7}}) {
    // Interleave the samples in several ways (distinct values, no ties).
    for (int shift = 0; shift < 4; ++shift) {
      std::vector<double> a, b;
      for (int i = 0; i < n; ++i) a.push_back(2.0 * i + 0.5 * shift);
      for (int j = 0; j < m; ++j) b.push_back(1.7 * j + 0.3);
      const KsResult r = ks_two_sample(a, b);
      SCOPED_TRACE(testing::Message() << "n " << n << " m " << m << " shift " << shift);
      EXPECT_TRUE(r.exact);
      EXPECT_NEAR(r.p_value, brute_force_p(n, m, r.statistic), kRel);
    }
  }
}

TEST(KsTest, MatchesScipyExact) {
  // scipy.stats.ks_2samp(a, b, method="exact"), scipy 1.16.
  {
    const KsResult r = ks_two_sample({0.1, 0.5, 0.9, 1.3}, {0.2, 0.3, 1.0, 1.1, 1.5});
    EXPECT_DOUBLE_EQ(r.statistic, 0.35);
    EXPECT_NEAR(r.p_value, 0.873015873015873, kRel);
  }
  {
    // Complete separation of 43 and 43: p = 2 / C(86, 43), kept accurate far below 1e-16.
    std::vector<double> a, b;
    for (int i = 0; i < 43; ++i) a.push_back(i), b.push_back(100 + i);
    const KsResult r = ks_two_sample(a, b);
    EXPECT_EQ(r.statistic, 1.0);
    EXPECT_NEAR(r.p_value, 3.0131585757296274e-25, 3.0131585757296274e-25 * kRel);
  }
  {
    std::vector<double> a, b;
    for (int i = 0; i < 37; ++i) a.push_back((i * 37 % 101) / 101.0);
    for (int i = 0; i < 52; ++i) b.push_back((i * 53 % 103) / 103.0 + 0.3);
    const KsResult r = ks_two_sample(a, b);
    EXPECT_NEAR(r.statistic, 0.32432432432432434, 1e-15);
    EXPECT_NEAR(r.p_value, 0.015672354581273425, 0.015672354581273425 * kRel);
  }
  {
    // Ties: the empirical CDFs step together at a shared value.
    const KsResult r = ks_two_sample({1, 1, 2, 2, 3, 3, 4}, {2, 2, 3, 3, 3, 5, 5, 6});
    EXPECT_DOUBLE_EQ(r.statistic, 0.375);
    EXPECT_NEAR(r.p_value, 0.5076923076923078, kRel);
  }
  {
    std::vector<double> a, b;
    for (int i = 0; i < 300; ++i) a.push_back((i * 37 % 101) / 101.0);
    for (int i = 0; i < 250; ++i) b.push_back((i * 53 % 103) / 103.0 + 0.05);
    const KsResult r = ks_two_sample(a, b);
    EXPECT_NEAR(r.statistic, 0.06066666666666667, 1e-15);
    EXPECT_NEAR(r.p_value, 0.6730460283350325, 0.6730460283350325 * kRel);
  }
}

TEST(KsTest, IdenticalSamplesAndLargeOnes) {
  const KsResult same = ks_two_sample({3, 1, 2}, {2, 3, 1});
  EXPECT_EQ(same.statistic, 0.0);
  EXPECT_EQ(same.p_value, 1.0);
  // n = m = 20000 (n*m past kKsExactLimit): a = 0..n-1, b the same shifted by 272, so
  // D = 272/n and sqrt(n*m/(n+m)) D = 272/200 = 1.36, whose Kolmogorov tail is 0.0495
  // (Smirnov's table: K(1.36) = 0.9505). Terms past k = 1 are below 1e-6.
  std::vector<double> a, b;
  for (int i = 0; i < 20000; ++i) a.push_back(i), b.push_back(i + 272);
  const KsResult big = ks_two_sample(a, b);
  EXPECT_FALSE(big.exact);
  EXPECT_DOUBLE_EQ(big.statistic, 272.0 / 20000);
  EXPECT_NEAR(big.p_value, 2 * std::exp(-2 * 1.36 * 1.36), 1e-6);
  EXPECT_NEAR(big.p_value, 0.0495, 1e-4);
}

TEST(KsTest, RefusesEmptyAndNaN) {
  EXPECT_THROW(ks_two_sample({}, {1.0}), Error);
  EXPECT_THROW(ks_two_sample({1.0, NAN}, {1.0}), Error);
}

TEST(TruthRatio, ByHand) {
  // Per-token log-likelihoods -1 (true), -2 and -3 (wrong): R = exp(-2.5 - (-1)).
  const double r = truth_ratio({-2, -6, -3}, {2, 3, 1}, 0);
  EXPECT_NEAR(r, std::exp(-1.5), 1e-15);
  // The answer in another position swaps roles: true -2, wrong -1 and -3 -> R = exp(0).
  EXPECT_NEAR(truth_ratio({-2, -6, -3}, {2, 3, 1}, 1), 1.0, 1e-15);
  EXPECT_TRUE(std::isnan(truth_ratio({-2}, {2}, 0)));
  // A choice of probability 0 still gives a finite ratio (reports are JSON, which has no inf).
  EXPECT_TRUE(std::isfinite(truth_ratio({-INFINITY, -1}, {1, 1}, 0)));
  EXPECT_THROW(truth_ratio({-1, -2}, {1}, 0), Error);
  EXPECT_THROW(truth_ratio({-1, -2}, {1, 0}, 0), Error);
  EXPECT_THROW(truth_ratio({-1, -2}, {1, 1}, 2), Error);

  const TruthRatioSummary s = summarize_truth_ratios({std::exp(-1.5), 1.0, 4.0, NAN});
  EXPECT_EQ(s.items, 3);
  EXPECT_NEAR(s.true_better, (1 - std::exp(-1.5) + 0 + 0) / 3, 1e-15);
  EXPECT_NEAR(s.closer_to_1, (std::exp(-1.5) + 1 + 0.25) / 3, 1e-15);
  EXPECT_TRUE(std::isnan(summarize_truth_ratios({NAN}).true_better));
}

}  // namespace
}  // namespace lethe
