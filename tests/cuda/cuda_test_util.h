// Helpers for the GPU tests: device buffers poisoned with NaN bytes before each run (an
// element a kernel forgot to write fails the comparison), fresh random inputs with the
// seed in the failure message, and a scaled-error comparison in which NaN never passes.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/core/bf16.h"
#include "kernels/cuda/runtime.h"

namespace lethe::cudatest {

// Fixture base: skips with the runtime's reason where no device is visible.
class GpuTest : public ::testing::Test {
 protected:
  // A fresh seed per test, printed with every failure (seed_msg); LETHE_TEST_SEED fixes it,
  // so a failure can be rerun on the same inputs (tools/gpu_check.sh sets one per check and
  // reruns failing tests with it).
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << cuda::unavailable_reason();
    const char* fixed = std::getenv("LETHE_TEST_SEED");
    seed_ = fixed && *fixed ? uint32_t(std::strtoul(fixed, nullptr, 10)) : std::random_device{}();
    rng_.seed(seed_);
  }
  std::vector<float> randn(size_t n, float stddev = 1.f, float mean = 0.f) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng_);
    return v;
  }
  std::vector<int32_t> randint(size_t n, int32_t hi) {
    std::uniform_int_distribution<int32_t> d(0, hi - 1);
    std::vector<int32_t> v(n);
    for (auto& x : v) x = d(rng_);
    return v;
  }
  std::string seed_msg() const { return "seed " + std::to_string(seed_); }
  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

// Round to bf16 and back: the values the GPU actually sees, fed to the CPU reference.
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (auto& x : v) x = bf16_to_float(float_to_bf16(x));
  return v;
}
inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}
inline std::vector<float> to_f32(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n), p_(static_cast<T*>(cuda::device_malloc(std::max<size_t>(n, 1) * sizeof(T)))) {
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& v) : DeviceBuffer(v.size()) { upload(v); }
  ~DeviceBuffer() { cuda::device_free(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // All-ones bytes are NaN in bf16, fp32 and fp64.
  void poison() { cuda::fill_bytes(p_, 0xff, n_ * sizeof(T)); }
  void upload(const std::vector<T>& v) {
    ASSERT_EQ(v.size(), n_);
    cuda::copy_to_device(p_, v.data(), n_ * sizeof(T));
  }
  std::vector<T> download() const {
    cuda::synchronize();
    std::vector<T> v(n_);
    cuda::copy_to_host(v.data(), p_, n_ * sizeof(T));
    return v;
  }
  T* get() { return p_; }
  const T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  size_t n_;
  T* p_;
};

inline DeviceBuffer<bf16>* dummy_bf16 = nullptr;

// max |gpu - ref| / max(max |ref|, floor). Any NaN or inf in gpu fails.
template <typename G, typename R>
::testing::AssertionResult close(const char* what, const std::vector<G>& gpu, const std::vector<R>& ref, double tol,
                                 double floor = 1e-6) {
  if (gpu.size() != ref.size())
    return ::testing::AssertionFailure() << what << ": " << gpu.size() << " values vs " << ref.size();
  double num = 0, den = floor;
  size_t worst = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double g = double(gpu[i]), r = double(ref[i]);
    if (!std::isfinite(g))
      return ::testing::AssertionFailure() << what << "[" << i << "] is " << g << " (reference " << r << ")";
    if (!std::isfinite(r))  // a broken reference must not pass by comparing as NaN does
      return ::testing::AssertionFailure() << what << ": reference [" << i << "] is " << r;
    const double e = std::abs(g - r);
    if (e > num) {
      num = e;
      worst = i;
    }
    den = std::max(den, std::abs(r));
  }
  const double err = num / den;
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": scaled max error " << err << " > " << tol << " at [" << worst
                                       << "]: gpu " << double(gpu[worst]) << ", reference " << double(ref[worst]);
}
template <typename R>
::testing::AssertionResult close(const char* what, const std::vector<bf16>& gpu, const std::vector<R>& ref, double tol,
                                 double floor = 1e-6) {
  return close(what, to_f32(gpu), ref, tol, floor);
}

// Per row of `row_len` values: max |gpu - ref| over the row / max(max |ref| over the row,
// 1/8 of the tensor's max |ref|). The global check above can hide a wrong row whose values
// are small beside the tensor's largest (a zeroed last key tile of dK passes it); here a
// row is judged at its own scale, except that rows below an eighth of the largest are
// judged at that eighth, not on the rounding noise of tiny sums. Any NaN or inf fails.
inline ::testing::AssertionResult close_rows(const char* what, const std::vector<float>& gpu,
                                             const std::vector<float>& ref, size_t row_len, double tol) {
  if (gpu.size() != ref.size() || row_len == 0 || ref.size() % row_len)
    return ::testing::AssertionFailure() << what << ": " << gpu.size() << " values vs " << ref.size() << " in rows of "
                                         << row_len;
  double gmax = 0;
  for (float r : ref) gmax = std::max(gmax, double(std::abs(r)));
  double worst = 0;
  size_t worst_row = 0;
  for (size_t row = 0; row < ref.size() / row_len; ++row) {
    double num = 0, den = gmax / 8;
    for (size_t i = row * row_len; i < (row + 1) * row_len; ++i) {
      if (!std::isfinite(gpu[i]))
        return ::testing::AssertionFailure() << what << "[" << i << "] is " << gpu[i] << " (reference " << ref[i] << ")";
      if (!std::isfinite(ref[i])) return ::testing::AssertionFailure() << what << ": reference [" << i << "] is " << ref[i];
      num = std::max(num, std::abs(double(gpu[i]) - double(ref[i])));
      den = std::max(den, double(std::abs(ref[i])));
    }
    // An all-zero reference: any difference at all is a failure.
    const double e = den > 0 ? num / den : (num > 0 ? INFINITY : 0.0);
    if (e > worst) {
      worst = e;
      worst_row = row;
    }
  }
  if (worst <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": row " << worst_row << " has scaled error " << worst << " > "
                                       << tol;
}
inline ::testing::AssertionResult close_rows(const char* what, const std::vector<bf16>& gpu,
                                             const std::vector<float>& ref, size_t row_len, double tol) {
  return close_rows(what, to_f32(gpu), ref, row_len, tol);
}

}  // namespace lethe::cudatest
