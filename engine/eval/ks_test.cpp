#include "engine/eval/ks_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "engine/core/error.h"

namespace lethe {
namespace {

// Kolmogorov's limit: P(sqrt(N) D > x) -> 2 sum_k (-1)^(k-1) exp(-2 k^2 x^2).
double kolmogorov_tail(double x) {
  if (x < 0.2) return 1.0;  // the series converges slowly there and the tail is 1 to 1e-16
  double s = 0;
  for (int k = 1; k <= 100; ++k) {
    const double t = std::exp(-2.0 * k * k * x * x);
    s += (k % 2 ? t : -t);
    if (t < 1e-18) break;
  }
  return std::clamp(2 * s, 0.0, 1.0);
}

// P(max over the path of |i*m - j*n| >= d) for a uniformly random monotone lattice path
// from (0,0) to (n,m). w(i,j) is the share of the C(i+j, i) paths into (i,j) that have
// already touched a point with |i*m - j*n| >= d; it obeys
//   w(i,j) = i/(i+j) w(i-1,j) + j/(i+j) w(i,j-1),   w = 1 on touching points,
// since C(i+j-1, i-1) / C(i+j, i) = i/(i+j). Summing shares of positive terms keeps a tiny
// p-value accurate, where 1 - (share of paths that never touch) would cancel to 0.
double exact_tail(int64_t n, int64_t m, int64_t d) {
  std::vector<double> w(size_t(m + 1), 0.0);  // row i, columns j
  for (int64_t i = 0; i <= n; ++i)
    for (int64_t j = 0; j <= m; ++j) {
      if (int64_t(std::llabs(i * m - j * n)) >= d) {
        w[size_t(j)] = 1.0;
      } else if (i + j > 0) {
        const double up = i > 0 ? w[size_t(j)] : 0.0, left = j > 0 ? w[size_t(j - 1)] : 0.0;
        w[size_t(j)] = (double(i) * up + double(j) * left) / double(i + j);
      }
    }
  return std::clamp(w[size_t(m)], 0.0, 1.0);
}

}  // namespace

KsResult ks_two_sample(std::vector<double> a, std::vector<double> b) {
  LETHE_CHECK(!a.empty() && !b.empty(), "Kolmogorov-Smirnov test: a sample is empty (", a.size(), " and ", b.size(),
              " values)");
  for (const auto* v : {&a, &b})
    for (const double x : *v) LETHE_CHECK(!std::isnan(x), "Kolmogorov-Smirnov test: a value is NaN");
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  const int64_t n = int64_t(a.size()), m = int64_t(b.size());
  // D * n * m as an integer: at each pooled value x (ties stepped together),
  // |#{a <= x} * m - #{b <= x} * n|.
  int64_t d = 0;
  size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    const double x = j == b.size() || (i < a.size() && a[i] <= b[j]) ? a[i] : b[j];
    while (i < a.size() && a[i] == x) ++i;
    while (j < b.size() && b[j] == x) ++j;
    d = std::max(d, int64_t(std::llabs(int64_t(i) * m - int64_t(j) * n)));
  }
  KsResult r;
  r.statistic = double(d) / (double(n) * double(m));
  if (d == 0) return r;  // identical empirical CDFs: p = 1
  if (double(n) * double(m) <= kKsExactLimit) {
    r.p_value = exact_tail(n, m, d);
  } else {
    r.exact = false;
    r.p_value = kolmogorov_tail(std::sqrt(double(n) * double(m) / double(n + m)) * r.statistic);
  }
  return r;
}

}  // namespace lethe
