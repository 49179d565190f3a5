// Shared helpers for the test suite: random tensors, error metrics, finite differences.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/rng.h"
#include "engine/core/tensor.h"

namespace lethe::test {

inline Tensor randn(const Shape& shape, DType dt, uint64_t seed, double stddev = 1.0, double mean = 0.0) {
  Tensor t = Tensor::empty(shape, DType::f64);
  Philox rng(seed, 0);
  double* d = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = mean + stddev * rng.normal(uint64_t(i));
  return dt == DType::f64 ? t : t.to(dt);
}

inline Tensor randint(const Shape& shape, int64_t hi, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::i32);
  Philox rng(seed, 1);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int32_t>()[i] = int32_t(rng.below(uint64_t(i), uint64_t(hi)));
  return t;
}

inline std::vector<double> values(const Tensor& t) {
  Tensor d = t.dtype() == DType::f64 ? t : t.to(DType::f64);
  return std::vector<double>(d.data<double>(), d.data<double>() + d.numel());
}

// max |a - b| / max(max |b|, floor): error relative to the reference's scale, so that
// tiny entries of a tensor do not dominate.
inline double scaled_err(const Tensor& a, const Tensor& b, double floor = 1e-30) {
  const auto x = values(a), y = values(b);
  EXPECT_EQ(x.size(), y.size());
  double num = 0, den = floor;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
    num = std::max(num, std::abs(x[i] - y[i]));
    den = std::max(den, std::abs(y[i]));
  }
  return num / den;
}

inline double dot(const Tensor& a, const Tensor& b) {
  const auto x = values(a), y = values(b);
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

// Central difference of f along direction dir (same shape as x, f64): (f(x+h d) - f(x-h d)) / 2h.
inline double directional_fd(Tensor& x, const Tensor& dir, const std::function<double()>& f, double h = 1e-5) {
  Tensor saved = x.clone();
  double* p = x.data<double>();
  const double* d = dir.data<double>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) p[i] = saved.data<double>()[i] + h * d[i];
  const double fp = f();
  for (int64_t i = 0; i < n; ++i) p[i] = saved.data<double>()[i] - h * d[i];
  const double fm = f();
  x.copy_from(saved);
  return (fp - fm) / (2 * h);
}

// Central difference of f with respect to each element of x (f64), into a tensor shaped like x.
inline Tensor elementwise_fd(Tensor& x, const std::function<double()>& f, double h = 1e-6) {
  Tensor g = Tensor::zeros(x.shape(), DType::f64);
  double* p = x.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = p[i];
    p[i] = v + h;
    const double fp = f();
    p[i] = v - h;
    const double fm = f();
    p[i] = v;
    g.data<double>()[i] = (fp - fm) / (2 * h);
  }
  return g;
}

}  // namespace lethe::test
