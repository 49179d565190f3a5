// Core: tensors, bf16 conversion, counter-based RNG.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>

#include "engine/core/bf16.h"
#include "engine/core/f16.h"
#include "engine/core/rng.h"
#include "engine/core/tensor.h"

namespace lethe {
namespace {

TEST(Tensor, ShapeViewsShareStorage) {
  Tensor t = Tensor::zeros({4, 3}, DType::f32);
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.nbytes(), 48u);
  Tensor rows = t.slice_rows(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  rows.data<float>()[0] = 7.0f;
  EXPECT_EQ(t.data<float>()[3], 7.0f);
  Tensor r = t.reshape({12});
  EXPECT_EQ(r.data<float>()[3], 7.0f);
  EXPECT_EQ(t.describe(), "f32[4,3] cpu");
}

TEST(Tensor, BadShapesAndAccessAreErrors) {
  Tensor t = Tensor::zeros({4, 3}, DType::f32);
  EXPECT_THROW(t.reshape({5, 3}), Error);
  EXPECT_THROW(t.view(10, {3}), Error);
  EXPECT_THROW(t.slice_rows(3, 5), Error);
  EXPECT_THROW(t.data<double>(), Error);  // wrong dtype
  EXPECT_THROW(Tensor::zeros({-1, 2}, DType::f32), Error);
}

TEST(Tensor, ConvertingCopies) {
  Tensor a = Tensor::from<double>({3}, {1.0, -2.5, 1.0 / 3.0});
  Tensor f = a.to(DType::f32), b = a.to(DType::bf16), back = b.to(DType::f64);
  EXPECT_EQ(f.data<float>()[2], float(1.0 / 3.0));
  EXPECT_EQ(back.data<double>()[0], 1.0);
  EXPECT_EQ(back.data<double>()[1], -2.5);
  EXPECT_NEAR(back.data<double>()[2], 1.0 / 3.0, 1.0 / 256);  // 8 significant bits
  Tensor i = Tensor::from<int32_t>({1}, {3});
  EXPECT_THROW(i.to(DType::f32), Error);
}

TEST(BF16, RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.0f)), -2.0f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  // Largest finite float rounds to +inf in bf16, as torch does.
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::max()))));
}

TEST(F16, ExactRoundTripAndRoundToNearestEven) {
  // Every finite half survives half -> float -> half.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(float_to_f16(f16_to_float(f16{uint16_t(h)})).bits, h) << std::hex << h;
  }
  // Between adjacent positive halves a < b: the midpoint goes to the even one, anything
  // above it to b, below it to a (covers subnormals and the carry into the exponent).
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const float a = f16_to_float(f16{uint16_t(h)}), b = f16_to_float(f16{uint16_t(h + 1)});
    const float mid = a + (b - a) / 2;
    ASSERT_EQ(float_to_f16(mid).bits, (h & 1) ? h + 1 : h) << std::hex << h;
    ASSERT_EQ(float_to_f16(std::nextafter(mid, b)).bits, h + 1) << std::hex << h;
    ASSERT_EQ(float_to_f16(std::nextafter(mid, a)).bits, h) << std::hex << h;
    ASSERT_EQ(float_to_f16(-mid).bits, ((h & 1) ? h + 1 : h) | 0x8000) << std::hex << h;
  }
  EXPECT_EQ(float_to_f16(65520.0f).bits, 0x7c00);  // halfway past the largest half: inf
  EXPECT_EQ(float_to_f16(65519.0f).bits, 0x7bff);
  EXPECT_EQ(float_to_f16(1e-9f).bits, 0);
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  Tensor t = Tensor::from<double>({2}, {1.5, -0.1});
  EXPECT_EQ(t.to(DType::f16).to(DType::f32).data<float>()[0], 1.5f);
}

TEST(Philox, MatchesPublishedKnownAnswer) {
  // Random123's kat_vectors for philox4x32_10: counter = key = 0.
  Philox p(0, 0);
  auto b = p.block(0);
  EXPECT_EQ(b[0], 0x6627e8d5u);
  EXPECT_EQ(b[1], 0xe169c58du);
  EXPECT_EQ(b[2], 0xbc57ac4cu);
  EXPECT_EQ(b[3], 0x9b00dbd8u);
}

TEST(Philox, NormalHasUnitMomentsAndIsThreadIndependent) {
  const int64_t n = 200000;
  std::vector<double> a(n), b(n);
  Philox rng(42, 7);
  omp_set_num_threads(1);
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) a[i] = rng.normal(uint64_t(i));
  omp_set_num_threads(2);
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) b[i] = rng.normal(uint64_t(i));
  EXPECT_EQ(a, b);
  double m = 0, v = 0;
  for (double x : a) m += x / n;
  for (double x : a) v += (x - m) * (x - m) / n;
  EXPECT_NEAR(m, 0.0, 0.01);  // 4.5 standard errors
  EXPECT_NEAR(v, 1.0, 0.015);
}

TEST(Philox, BelowIsInRangeAndStreamsDiffer) {
  Philox a(1, 0), b(1, 1);
  int same = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    const uint64_t x = a.below(i, 10);
    EXPECT_LT(x, 10u);
    same += x == b.below(i, 10);
  }
  EXPECT_LT(same, 200);  // ~100 expected by chance
}

}  // namespace
}  // namespace lethe
