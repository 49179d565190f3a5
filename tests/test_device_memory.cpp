// Device memory without a device: the caching allocator and device tensors run here over
// a stand-in backend (host memory with a capacity), so their logic is tested on every
// machine; the CUDA backend itself is exercised by the GPU tests.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <set>

#include "engine/core/device_memory.h"
#include "engine/core/tensor.h"
#include "kernels/device.h"
#include "tests/test_util.h"

namespace lethe {
namespace {

// Host memory posing as a device of `capacity` bytes; counts what the allocator asks of it.
class FakeBackend : public DeviceBackend {
 public:
  explicit FakeBackend(size_t capacity) : capacity_(capacity) {}
  ~FakeBackend() override { EXPECT_TRUE(blocks_.empty()) << blocks_.size() << " blocks never freed"; }
  const char* name() const override { return "fake"; }
  void* malloc(size_t bytes) override {
    if (used_ + bytes > capacity_) return nullptr;
    void* p = std::malloc(bytes);
    blocks_[p] = bytes;
    used_ += bytes;
    ++mallocs;
    return p;
  }
  void free(void* p) override {
    used_ -= blocks_.at(p);
    blocks_.erase(p);
    std::free(p);
  }
  void copy(void* dst, bool, const void* src, bool, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    ++copies;
  }
  void zero(void* p, size_t bytes) override { std::memset(p, 0, bytes); }
  int64_t mallocs = 0, copies = 0;
  size_t used() const { return used_; }

 private:
  size_t capacity_, used_ = 0;
  std::map<void*, size_t> blocks_;
};

constexpr size_t kMiB = size_t(1) << 20;

TEST(CachingAllocator, RoundsSizesSoBlocksCanBeReused) {
  EXPECT_EQ(CachingAllocator::rounded(0), 512u);
  EXPECT_EQ(CachingAllocator::rounded(1), 512u);
  EXPECT_EQ(CachingAllocator::rounded(513), 1024u);
  EXPECT_EQ(CachingAllocator::rounded(kMiB), kMiB);
  EXPECT_EQ(CachingAllocator::rounded(kMiB + 1), 2 * kMiB);
  EXPECT_EQ(CachingAllocator::rounded(5 * kMiB), 6 * kMiB);
}

// A training step allocates the same sizes every time: after the first step the backend
// is never asked again.
TEST(CachingAllocator, RepeatedStepsStopCallingTheBackend) {
  FakeBackend b(64 * kMiB);
  {
    CachingAllocator a(b);
    const size_t sizes[] = {4096, 3 * kMiB, 1000, 3 * kMiB, 70000, 12};
    int64_t after_first = 0;
    for (int step = 0; step < 5; ++step) {
      std::vector<void*> live;
      for (size_t s : sizes) live.push_back(a.allocate(s));
      std::set<void*> distinct(live.begin(), live.end());
      EXPECT_EQ(distinct.size(), live.size()) << "a block handed out twice";
      for (void* p : live) a.release(p);
      if (step == 0) after_first = a.stats().backend_mallocs;
    }
    EXPECT_EQ(a.stats().backend_mallocs, after_first);
    EXPECT_EQ(after_first, 6);
    EXPECT_EQ(a.stats().in_use, 0u);
    EXPECT_EQ(a.stats().peak_in_use, 512 + 4 * kMiB + 4 * kMiB + 1024 + 70144 + 4096);
  }
  EXPECT_EQ(b.used(), 0u) << "the cache went back to the backend with the allocator";
}

TEST(CachingAllocator, ReusesOnlyBlocksAtMostTwiceTheRequest) {
  FakeBackend b(64 * kMiB);
  CachingAllocator a(b);
  a.release(a.allocate(8 * kMiB));
  void* small = a.allocate(kMiB);  // 8 MiB cached would waste 7: a new block
  EXPECT_EQ(a.stats().backend_mallocs, 2);
  void* fits = a.allocate(6 * kMiB);  // 8 <= 2 * 6: reused
  EXPECT_EQ(a.stats().backend_mallocs, 2);
  EXPECT_EQ(a.stats().in_use, 8 * kMiB + kMiB);
  a.release(small);
  a.release(fits);
  a.empty_cache();
  EXPECT_EQ(b.used(), 0u);
  EXPECT_THROW(a.release(&b), Error);  // not ours
}

// Out of memory: the cache is returned to the device and the request retried; when even
// that fails, the error says how much was asked and how much lethe holds.
TEST(CachingAllocator, OutOfMemoryFreesTheCacheThenNamesTheSizes) {
  FakeBackend b(10 * kMiB);
  CachingAllocator a(b);
  void* x = a.allocate(4 * kMiB);
  a.release(a.allocate(4 * kMiB));  // 4 MiB cached, 8 of 10 reserved
  void* y = a.allocate(6 * kMiB);   // fits only once the cached block is freed
  EXPECT_EQ(a.stats().cached, 0u);
  a.release(y);
  try {
    a.allocate(9 * kMiB);
    FAIL() << "allocated beyond the device";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("fake: out of memory allocating 10 MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("4 MiB in use"), std::string::npos) << m;
  }
  a.release(x);
}

class DeviceTensor : public ::testing::Test {
 protected:
  void SetUp() override {
    auto fake = std::make_unique<FakeBackend>(64 * kMiB);
    fake_ = fake.get();
    previous_ = swap_device_backend_for_testing(std::move(fake));
  }
  void TearDown() override { swap_device_backend_for_testing(std::move(previous_)); }
  FakeBackend* fake_ = nullptr;
  std::unique_ptr<DeviceBackend> previous_;
};

TEST_F(DeviceTensor, RoundTripsThroughTheDevice) {
  const Tensor h = test::randn({3, 5}, DType::f32, 1);
  {
    Tensor d = h.to(Device::cuda);
    EXPECT_EQ(d.device(), Device::cuda);
    EXPECT_EQ(d.describe(), "f32[3,5] cuda");
    const Tensor back = d.to(Device::cpu);
    EXPECT_EQ(test::values(back), test::values(h));
    // A view (rows 1..2) copies out its own elements.
    EXPECT_EQ(test::values(d.slice_rows(1, 3).to(Device::cpu)), test::values(h.slice_rows(1, 3)));
    Tensor z = Tensor::zeros({4}, DType::bf16, Device::cuda);
    EXPECT_EQ(test::values(z.to(Device::cpu)), std::vector<double>(4, 0.0));
    Tensor c = d.clone();
    EXPECT_EQ(c.device(), Device::cuda);
    EXPECT_EQ(test::values(c.to(Device::cpu)), test::values(h));
  }
  EXPECT_EQ(device_allocator().stats().in_use, 0u);
  EXPECT_GT(device_allocator().stats().cached, 0u);
}

TEST_F(DeviceTensor, HostAccessIsAClearError) {
  Tensor d = Tensor::zeros({2, 2}, DType::f32, Device::cuda);
  try {
    d.data<float>();
    FAIL() << "host access to a device tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is on cuda: copy it with to(Device::cpu)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(d.copy_from(Tensor::zeros({3}, DType::f32)), Error);
  EXPECT_THROW(d.copy_from(Tensor::zeros({2, 2}, DType::i32)), Error);
}

// Converting copies to, from and on the device: this backend has no cast kernel, so they
// go through host memory, and round once from the source's value (bf16 nearest even).
TEST_F(DeviceTensor, ConversionsRoundOnceFromTheSource) {
  const Tensor h = Tensor::from<double>({4}, {1.0 + 1.0 / 512, 1.0 + 3.0 / 512, -2.5, 1e-3});
  Tensor d = Tensor::empty({4}, DType::bf16, Device::cuda);
  d.copy_from(h);  // host f64 -> device bf16
  const std::vector<double> want = {1.0, 1.0 + 1.0 / 128, -2.5, double(round_bf16(1e-3f))};
  EXPECT_EQ(test::values(d.to(Device::cpu)), want);
  const Tensor f = d.to(DType::f32);  // device bf16 -> device f32
  EXPECT_EQ(f.device(), Device::cuda);
  EXPECT_EQ(test::values(f.to(Device::cpu)), want);
  Tensor back = Tensor::empty({4}, DType::f64);
  back.copy_from(f);  // device f32 -> host f64
  EXPECT_EQ(test::values(back), want);
}

// The real backend: a CPU-only build has none; a CUDA build without a device says so.
TEST(DeviceTensorReal, WithoutADeviceAllocationIsAClearError) {
  if (!cuda_devices().empty()) GTEST_SKIP() << "a CUDA device is visible";
  try {
    Tensor::zeros({2}, DType::f32, Device::cuda);
    FAIL() << "a device tensor without a device";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_TRUE(m.find("does not include") != std::string::npos || m.find("cuda: ") != std::string::npos) << m;
  }
}

}  // namespace
}  // namespace lethe
