// The device query works in every build: a CPU-only build reports no CUDA, a CUDA build
// without a GPU reports no devices (and the GPU checks skip), a GPU machine lists its cards.
#include <gtest/gtest.h>

#include "kernels/device.h"

namespace {

TEST(Device, QueryNeverFails) {
  const auto devs = lethe::cuda_devices();
  if (!lethe::cuda_compiled()) {
    EXPECT_TRUE(devs.empty());
  }
}

TEST(Device, VisibleGpusReportNameAndMemory) {
  const auto devs = lethe::cuda_devices();
  if (devs.empty()) GTEST_SKIP() << "no CUDA device visible";
  for (const auto& d : devs) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.memory_bytes, size_t(1) << 30);
    EXPECT_GE(d.major, 7) << d.name << ": lethe's kernels target sm_70 and newer";
  }
}

}  // namespace
