// Two-sample Kolmogorov-Smirnov test. TOFU's "forget quality" is its p-value: how
// plausible it is that an unlearned model's per-question truth ratios and the retrain
// oracle's come from one distribution (a high p-value: indistinguishable from the oracle).
#pragma once
#include <vector>

namespace lethe {

struct KsResult {
  double statistic = 0;  // sup |F_a - F_b| over the pooled values, in [0, 1]
  double p_value = 1;    // two-sided
  bool exact = true;     // false: the asymptotic (Kolmogorov) distribution was used
};

// The p-value is exact, P(D >= d) over the C(n+m, n) equally likely orderings of the
// pooled samples, for n*m up to kKsExactLimit (scipy's ks_2samp(method="exact") computes
// the same number); above it, the Kolmogorov limit with n*m/(n+m) as the sample size.
// Tied values are handled in the statistic (the empirical CDFs step together), while the
// p-value, as scipy's, assumes continuous data. An empty sample or a NaN value is an error.
inline constexpr double kKsExactLimit = 1e8;
KsResult ks_two_sample(std::vector<double> a, std::vector<double> b);

}  // namespace lethe
