// The NCCL communicator (engine/parallel/nccl_comm.cpp) with one rank on one GPU: NCCL
// refuses two ranks on the same device, so one rank is what a one-GPU machine can run.
// With one rank every collective is the identity (or a copy), so the values are known
// exactly; what these tests prove is that the library loads and is new enough, that a
// non-blocking communicator initialises, enqueues, finalises and is destroyed, and that the
// collectives are ordered with the compute stream in both directions (inputs produced by
// earlier work, results seen by later work) without the host waiting. Multi-rank NCCL
// needs several GPUs; tests/parallel runs the same collectives host-staged.
//
// The version and configuration tests run without a device; the rest skip without one.
#include <gtest/gtest.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "engine/core/tensor.h"
#include "engine/parallel/communicator.h"
#include "engine/parallel/nccl_comm.h"
#include "kernels/cuda/runtime.h"
#include "kernels/device.h"
#include "tests/cuda/cuda_test_util.h"

namespace lethe {
namespace {

// The library this process loaded (not the header it was built against): the one the
// communicator will use.
TEST(NcclLibrary, LoadedVersionIsNewEnough) {
  int v = 0;
  ASSERT_EQ(ncclGetVersion(&v), ncclSuccess);
  ::testing::Test::RecordProperty("nccl_version", v);
  std::printf("NCCL %d.%d.%d loaded\n", v / 10000, v / 100 % 100, v % 100);
  EXPECT_GE(v, kMinNcclVersion);
}

// A bad LETHE_NCCL_TIMEOUT_S is refused by name before NCCL or the device is touched.
TEST(NcclLibrary, BadTimeoutIsRefusedByName) {
  const char* old = std::getenv("LETHE_NCCL_TIMEOUT_S");
  const std::string saved = old ? old : "";
  for (const char* bad : {"-1", "ten", "nan", "5s"}) {
    setenv("LETHE_NCCL_TIMEOUT_S", bad, 1);
    try {
      make_nccl_communicator(make_local_communicator());
      ADD_FAILURE() << "LETHE_NCCL_TIMEOUT_S=" << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("LETHE_NCCL_TIMEOUT_S='" + std::string(bad) + "'"), std::string::npos)
          << e.what();
    }
  }
  if (old) setenv("LETHE_NCCL_TIMEOUT_S", saved.c_str(), 1);
  else unsetenv("LETHE_NCCL_TIMEOUT_S");
}

class Nccl : public cudatest::GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_TRUE(cuda_compiled());
    comm_ = make_nccl_communicator(make_local_communicator());
  }
  // A device tensor holding n distinct bit patterns of dtype dt (seeded), and its host copy.
  Tensor pattern(int64_t n, DType dt, Tensor* host) {
    Tensor h = Tensor::empty({n}, dt);
    std::vector<int32_t> words = randint(size_t(h.nbytes() + 3) / 4, 1 << 30);
    // Finite values for the floating types: max and sum of one rank must not meet NaN.
    if (dt == DType::bf16) {
      for (int64_t i = 0; i < n; ++i) h.data<bf16>()[i] = float_to_bf16(float(words[size_t(i / 2)] % 2001 - 1000) / 7.f);
    } else if (dt == DType::f32) {
      for (int64_t i = 0; i < n; ++i) h.data<float>()[i] = float(words[size_t(i)]) * 1e-3f - 5e5f;
    } else if (dt == DType::f64) {
      for (int64_t i = 0; i < n; ++i) h.data<double>()[i] = double(words[size_t(i / 2)]) / 3.0 - 1e8;
    } else {
      std::memcpy(h.raw(), words.data(), size_t(h.nbytes()));
    }
    *host = h;
    return h.to(Device::cuda);
  }
  static void expect_bits(const Tensor& device, const Tensor& host, const std::string& what) {
    const Tensor back = device.to(Device::cpu);
    ASSERT_EQ(back.nbytes(), host.nbytes()) << what;
    EXPECT_EQ(std::memcmp(back.raw(), host.raw(), size_t(host.nbytes())), 0) << what << " changed bits";
  }
  std::unique_ptr<Communicator> comm_;
};

TEST_F(Nccl, OneRankCommunicatorDescribesItself) {
  EXPECT_EQ(comm_->backend(), "nccl");
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
}

// Every collective of one rank leaves the values as they were, bit for bit, in every dtype
// the engine sends (odd lengths: nothing assumes a multiple of a vector width).
TEST_F(Nccl, OneRankCollectivesAreTheIdentityInEveryDtype) {
  for (DType dt : {DType::bf16, DType::f32, DType::f64, DType::i32, DType::f16}) {
    const std::string name = std::string(dtype_name(dt)) + ", " + seed_msg();
    Tensor host;
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
      if (dt == DType::f16) break;  // f16 only travels by gather and broadcast here
      Tensor x = pattern(1001, dt, &host);
      comm_->all_reduce(x, op);
      expect_bits(x, host, "all_reduce " + name);
      Tensor y = pattern(777, dt, &host);
      comm_->all_reduce_async(y, op)->wait();
      expect_bits(y, host, "all_reduce_async " + name);
    }
    Tensor in = pattern(1003, dt, &host);
    Tensor out = Tensor::zeros({1003}, dt, Device::cuda);
    comm_->all_gather(in, out);
    expect_bits(out, host, "all_gather " + name);
    Tensor out2 = Tensor::zeros({1003}, dt, Device::cuda);
    comm_->all_gather_async(in, out2)->wait();
    expect_bits(out2, host, "all_gather_async " + name);
    comm_->all_gather(out2, out2);  // in place: the input is the output's own (only) chunk
    expect_bits(out2, host, "all_gather in place " + name);
    comm_->broadcast(in, 0);
    expect_bits(in, host, "broadcast " + name);
    if (dt == DType::f16) continue;
    Tensor rs = Tensor::zeros({1003}, dt, Device::cuda);
    comm_->reduce_scatter(in, rs);
    expect_bits(rs, host, "reduce_scatter " + name);
    Tensor rs2 = Tensor::zeros({1003}, dt, Device::cuda);
    comm_->reduce_scatter_async(in, rs2)->wait();
    expect_bits(rs2, host, "reduce_scatter_async " + name);
  }
}

// Host tensors (a loss, a token count) go to the host group, as on a grid.
TEST_F(Nccl, HostTensorsGoToTheHostGroup) {
  Tensor h = Tensor::from<double>({3}, {1.5, -2.0, 3.25});
  comm_->all_reduce(h, ReduceOp::sum);
  EXPECT_EQ(h.data<double>()[1], -2.0);
  EXPECT_EQ(comm_->all_reduce(int64_t(41), ReduceOp::max), 41);
  Tensor in = Tensor::from<float>({2}, {1.f, 2.f}), out = Tensor::zeros({2}, DType::f32);
  comm_->all_gather(in, out);
  EXPECT_EQ(out.data<float>()[1], 2.f);
  comm_->barrier();
}

// Mixed host and device buffers are refused naming both, before NCCL sees them.
TEST_F(Nccl, MixedDevicesAreRefusedByName) {
  Tensor dev = Tensor::zeros({4}, DType::f32, Device::cuda), host = Tensor::zeros({4}, DType::f32);
  try {
    comm_->all_gather(host, dev);
    ADD_FAILURE() << "a host input with a device output was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all_gather: input"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("different devices"), std::string::npos) << e.what();
  }
  EXPECT_THROW(comm_->reduce_scatter(dev, host), Error);
}

// Ordering, both ways. The compute stream (the legacy default stream, where lethe's
// kernels and copies run) writes the input through a chain of large copies; the collective
// runs on NCCL's own non-blocking stream, which does not wait for the legacy stream by
// itself; a copy on the compute stream then reads the output. Without the events of
// nccl_comm.cpp the collective would read the input before the chain ends (it would gather
// the initial 0x11 bytes) or the final copy would read the output before the collective
// (the initial 0x22 bytes). The chain takes milliseconds on any GPU (24 copies of 64 MiB),
// enough for a missing dependency to show.
class NcclOrdering : public Nccl {
 protected:
  static constexpr int64_t kN = int64_t(16) << 20;  // f32 elements: 64 MiB a buffer
  void SetUp() override {
    Nccl::SetUp();
    if (IsSkipped()) return;
    src_ = pattern(kN, DType::f32, &host_);
    a_ = Tensor::empty({kN}, DType::f32, Device::cuda);
    b_ = Tensor::empty({kN}, DType::f32, Device::cuda);
    in_ = Tensor::empty({kN}, DType::f32, Device::cuda);
    out_ = Tensor::empty({kN}, DType::f32, Device::cuda);
    res_ = Tensor::empty({kN}, DType::f32, Device::cuda);
    cuda::fill_bytes(in_.raw(), 0x11, size_t(in_.nbytes()));
    cuda::fill_bytes(out_.raw(), 0x22, size_t(out_.nbytes()));
    cuda::synchronize();
  }
  // Queued on the compute stream; the host does not wait for it.
  void produce_input() {
    const size_t bytes = size_t(in_.nbytes());
    cuda::copy_device(a_.raw(), src_.raw(), bytes);
    for (int i = 0; i < 11; ++i) {
      cuda::copy_device(b_.raw(), a_.raw(), bytes);
      cuda::copy_device(a_.raw(), b_.raw(), bytes);
    }
    cuda::copy_device(in_.raw(), a_.raw(), bytes);
  }
  void consume_output() { cuda::copy_device(res_.raw(), out_.raw(), size_t(out_.nbytes())); }
  Tensor host_, src_, a_, b_, in_, out_, res_;
};

TEST_F(NcclOrdering, BlockingCollectiveWaitsForItsInputsAndIsSeenByLaterWork) {
  produce_input();
  comm_->all_gather(in_, out_);
  consume_output();
  expect_bits(res_, host_, "all_gather between a copy chain and a copy, " + seed_msg());
}

TEST_F(NcclOrdering, AsynchronousCollectiveIsSeenAfterWait) {
  produce_input();
  auto pending = comm_->reduce_scatter_async(in_, out_);
  pending->wait();
  consume_output();
  expect_bits(res_, host_, "reduce_scatter_async, " + seed_msg());
}

// Destroying a pending collective orders it before what the compute stream runs next, as
// wait() does (communicator.h: a buffer is never reused while the library may write it).
TEST_F(NcclOrdering, DestroyingAPendingCollectiveWaitsForIt) {
  produce_input();
  comm_->all_gather_async(in_, out_).reset();
  consume_output();
  expect_bits(res_, host_, "all_gather_async destroyed unfinished, " + seed_msg());
}

// A pending collective left when the communicator goes: finalisation flushes it and the
// destructor returns (a non-blocking communicator destroyed unfinalised may hang or leak).
TEST_F(NcclOrdering, CommunicatorDestroyedWithWorkInFlightFinishesIt) {
  produce_input();
  auto pending = comm_->all_gather_async(in_, out_);
  pending->wait();
  comm_.reset();
  cuda::synchronize();
  consume_output();
  expect_bits(res_, host_, "all_gather before the communicator was destroyed, " + seed_msg());
}

}  // namespace
}  // namespace lethe
