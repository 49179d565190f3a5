// The device NaN / Inf scan against a host loop: exact count and lowest index, for bf16
// and fp32, sizes that do and do not fill the launch, and the all-finite and empty cases.
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/cuda/numerics.h"
#include "tests/cuda/cuda_test_util.h"

namespace lethe::cudatest {
namespace {

class CudaNumerics : public GpuTest {};

struct HostScan {
  int64_t count = 0, first = -1;
};
template <typename T>
HostScan host_scan(const std::vector<T>& v) {
  HostScan r;
  for (size_t i = 0; i < v.size(); ++i) {
    float x;
    if constexpr (std::is_same_v<T, bf16>) x = bf16_to_float(v[i]);
    else x = v[i];
    if (!std::isfinite(x)) {
      if (r.count++ == 0) r.first = int64_t(i);
    }
  }
  return r;
}

TEST_F(CudaNumerics, CountAndFirstIndexMatchTheHost) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int64_t n : {int64_t(1), int64_t(255), int64_t(4097), int64_t(3) << 20}) {
    std::vector<float> v = randn(size_t(n));
    std::uniform_int_distribution<int64_t> at(0, n - 1);
    const int64_t hits = n > 8 ? 5 : 1;
    for (int64_t h = 0; h < hits; ++h) v[size_t(at(rng_))] = (h % 3 == 0) ? nan : (h % 3 == 1 ? inf : -inf);
    const HostScan want = host_scan(v);
    DeviceBuffer<float> f(v);
    const cuda::DeviceNonFinite got = cuda::find_nonfinite(f.get(), n);
    EXPECT_EQ(got.count, want.count) << "f32 n=" << n << " " << seed_msg();
    EXPECT_EQ(got.first, want.first) << "f32 n=" << n << " " << seed_msg();
    const std::vector<bf16> b = to_bf16(v);
    const HostScan want_b = host_scan(b);
    DeviceBuffer<bf16> db(b);
    const cuda::DeviceNonFinite got_b = cuda::find_nonfinite(db.get(), n);
    EXPECT_EQ(got_b.count, want_b.count) << "bf16 n=" << n << " " << seed_msg();
    EXPECT_EQ(got_b.first, want_b.first) << "bf16 n=" << n << " " << seed_msg();
  }
}

TEST_F(CudaNumerics, FiniteAndEmptyBuffersReportNothing) {
  // 3e38 is finite in fp32; bf16 rounds it to 2.99e38, still finite.
  std::vector<float> v(10000, 3e38f);
  DeviceBuffer<float> f(v);
  const cuda::DeviceNonFinite r = cuda::find_nonfinite(f.get(), int64_t(v.size()));
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.first, -1);
  const cuda::DeviceNonFinite e = cuda::find_nonfinite(f.get(), 0);
  EXPECT_EQ(e.count, 0);
  EXPECT_EQ(e.first, -1);
}

// A poisoned buffer (all bytes 0xff, which is NaN) is reported whole: the scan reads
// every entry.
TEST_F(CudaNumerics, PoisonIsFoundEverywhere) {
  DeviceBuffer<bf16> p(12345);
  const cuda::DeviceNonFinite r = cuda::find_nonfinite(p.get(), 12345);
  EXPECT_EQ(r.count, 12345);
  EXPECT_EQ(r.first, 0);
}

}  // namespace
}  // namespace lethe::cudatest
