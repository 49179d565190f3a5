// Device tensors on a real GPU: the caching allocator over CUDA (engine/core/
// device_memory.h) and host <-> device copies. Skips without a device.
#include <gtest/gtest.h>

#include <vector>

#include "engine/core/device_memory.h"
#include "engine/core/tensor.h"
#include "kernels/device.h"
#include "tests/cuda/cuda_test_util.h"

namespace lethe {
namespace {

class CudaMemory : public cudatest::GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    // kernels/device.cpp registers the CUDA backend as it is loaded; referencing it links it.
    ASSERT_TRUE(cuda_compiled());
  }
};

TEST_F(CudaMemory, TensorsRoundTripThroughTheDevice) {
  const std::vector<float> v = randn(1000);
  Tensor h = Tensor::from<float>({10, 100}, v);
  Tensor d = h.to(Device::cuda);
  ASSERT_EQ(d.device(), Device::cuda);
  const Tensor back = d.to(Device::cpu);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(back.data<float>()[i], v[i]) << i << ", " << seed_msg();
  Tensor z = Tensor::zeros({7, 3}, DType::bf16, Device::cuda);
  const Tensor zb = z.to(Device::cpu);
  for (int64_t i = 0; i < zb.numel(); ++i) ASSERT_EQ(bf16_to_float(zb.data<bf16>()[i]), 0.f) << i;
  EXPECT_THROW(d.data<float>(), Error);
}

// The step's allocation pattern repeated: cudaMalloc only in the first round.
TEST_F(CudaMemory, RepeatedStepsDoNotCallCudaMalloc) {
  CachingAllocator& a = device_allocator();
  int64_t after_first = 0;
  for (int step = 0; step < 4; ++step) {
    {
      std::vector<Tensor> live;
      for (int64_t n : {4096, 3 << 20, 1000, 3 << 20, 70000})
        live.push_back(Tensor::empty({n}, DType::f32, Device::cuda));
    }
    if (step == 0) after_first = a.stats().backend_mallocs;
  }
  EXPECT_EQ(a.stats().backend_mallocs, after_first);
}

}  // namespace
}  // namespace lethe
