// The op-family timer of the GPU benchmark (kernels/timed_device_ops.h), run around the
// model's device path on the host-staged device: it must change no bit of what it wraps,
// see every op exactly once in the family it belongs to, and give shares that add up.
// Calls are counted rather than timed, so the assertions do not depend on the clock.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>

#include "engine/model/llama.h"
#include "engine/optim/optimizer.h"
#include "kernels/host_staged_device.h"
#include "kernels/timed_device_ops.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

LlamaConfig config() {
  LlamaConfig c;
  c.name = "timed-gqa";
  c.vocab_size = 37;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 24;
  c.max_seq_len = 40;
  c.init_std = 0.3;
  return c;
}

constexpr int64_t B = 2, T = 33;

// Equal as stored: bf16 widened to f32 is exact, so equal bits compare equal.
bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::cpu).to(DType::f32), y = b.to(Device::cpu).to(DType::f32);
  return x.numel() == y.numel() && std::memcmp(x.data<float>(), y.data<float>(), size_t(x.numel()) * 4) == 0;
}

int64_t total_calls(const OpFamilyTimes& t) {
  int64_t n = 0;
  for (int64_t c : t.calls) n += c;
  return n;
}

class TimedDeviceOpsTest : public ::testing::Test {
 protected:
  ScopedHostStagedDevice device_;
  LlamaConfig cfg_ = config();
  Tensor tok_ = randint({B, T}, cfg_.vocab_size, 3), tgt_ = randint({B, T}, cfg_.vocab_size, 4);
  Tensor w_ = randn({B, T}, DType::f32, 5, 0.1);
};

TEST_F(TimedDeviceOpsTest, ChangesNoBitAndCountsEveryOpInItsFamily) {
  LlamaModel plain(cfg_, Precision::bf16, nullptr, Device::cuda), timed(cfg_, Precision::bf16, nullptr, Device::cuda);
  plain.init_weights(9);
  timed.init_weights(9);
  const double l_plain = plain.forward(tok_, tgt_, &w_);
  plain.backward();

  int64_t syncs = 0;
  const int64_t ops_before = device_.ops_run();
  OpFamilyTimes t;
  double l_timed = 0;
  {
    ScopedOpTiming timing([&] { ++syncs; });
    l_timed = timed.forward(tok_, tgt_, &w_);
    timed.backward();
    t = timing.times();
  }
  EXPECT_EQ(l_timed, l_plain);
  EXPECT_TRUE(same_bits(timed.logprobs(), plain.logprobs()));
  for (size_t i = 0; i < plain.grads().size(); ++i)
    EXPECT_TRUE(same_bits(timed.grads()[i], plain.grads()[i])) << plain.grads().spec(i).name;

  // Every op reached the wrapped device once, through the timer, and was waited for on
  // both sides of its clock.
  EXPECT_EQ(total_calls(t), device_.ops_run() - ops_before);
  EXPECT_EQ(syncs, 2 * total_calls(t));
  for (OpFamily f : {OpFamily::gemm, OpFamily::attention, OpFamily::norm, OpFamily::rope, OpFamily::elementwise,
                     OpFamily::embedding, OpFamily::loss})
    EXPECT_GT(t.calls_of(f), 0) << op_family_name(f);
  EXPECT_EQ(t.calls_of(OpFamily::optimizer), 0);
  // Per layer: 4 projections forward (q/k/v and gate/up fused), 4 backward (each computing
  // dx and dW in one call).
  EXPECT_GE(t.calls_of(OpFamily::gemm), cfg_.n_layers * 8);
  EXPECT_EQ(t.calls_of(OpFamily::attention), 2 * cfg_.n_layers);
  EXPECT_EQ(t.calls_of(OpFamily::rope), 2 * cfg_.n_layers);  // the q/k/v split and its transpose
  EXPECT_EQ(t.calls_of(OpFamily::embedding), 2);
  for (int f = 0; f < kOpFamilies; ++f) {
    EXPECT_GE(t.seconds[size_t(f)], 0);
    if (t.calls[size_t(f)] == 0) {
      EXPECT_EQ(t.seconds[size_t(f)], 0) << op_family_name(OpFamily(f));
    }
  }
}

TEST_F(TimedDeviceOpsTest, AnOptimizerStepIsTheOptimizerFamilyAlone) {
  LlamaModel model(cfg_, Precision::bf16, nullptr, Device::cuda);
  model.init_weights(9);
  OptimConfig oc;
  oc.grad_clip = 1e-3;  // clipping on: the norm and the scale run too
  Optimizer opt(model.params(), oc, Precision::bf16);
  model.forward(tok_, tgt_, &w_);
  model.backward();
  OpFamilyTimes t;
  {
    ScopedOpTiming timing(nullptr);
    opt.step(model.grads(), 1e-3);
    t = timing.times();
  }
  EXPECT_GT(t.calls_of(OpFamily::optimizer), 0);
  EXPECT_EQ(total_calls(t), t.calls_of(OpFamily::optimizer));
}

TEST_F(TimedDeviceOpsTest, RestoresTheWrappedOpsOnExit) {
  LlamaModel model(cfg_, Precision::bf16, nullptr, Device::cuda);
  model.init_weights(9);
  OpFamilyTimes t;
  {
    ScopedOpTiming timing(nullptr);
    model.forward(tok_, tgt_);
    t = timing.times();
  }
  const int64_t ops_before = device_.ops_run();
  model.forward(tok_, tgt_);
  EXPECT_EQ(device_.ops_run() - ops_before, total_calls(t));  // the same ops, on the device itself
}

TEST(StepShares, SumToOneWithTheRestAsOther) {
  OpFamilyTimes t;
  t.calls[size_t(OpFamily::gemm)] = 10;
  t.seconds[size_t(OpFamily::gemm)] = 0.3;
  t.calls[size_t(OpFamily::attention)] = 4;
  t.seconds[size_t(OpFamily::attention)] = 0.1;
  t.calls[size_t(OpFamily::optimizer)] = 1;
  t.seconds[size_t(OpFamily::optimizer)] = 1.0 / 3;
  for (double step : {1.0, 0.7, 0.2, 0.0}) {  // 0.2, 0.0: the ops' sum becomes the step
    const std::vector<StepShare> rows = step_shares(t, step);
    ASSERT_EQ(rows.size(), size_t(kOpFamilies + 1));
    EXPECT_EQ(rows.back().what, "other");
    EXPECT_EQ(rows[size_t(OpFamily::gemm)].what, op_family_name(OpFamily::gemm));
    EXPECT_EQ(rows[size_t(OpFamily::gemm)].calls, 10);
    double sum = 0;
    for (const StepShare& r : rows) {
      EXPECT_GE(r.share, 0) << r.what;
      sum += r.share;
    }
    EXPECT_NEAR(sum, 1.0, 1e-9) << "step " << step;
  }
  EXPECT_NEAR(step_shares(t, 1.0)[size_t(OpFamily::gemm)].share, 0.3, 1e-12);
  EXPECT_NEAR(step_shares(t, 1.0).back().seconds, 1.0 - 0.3 - 0.1 - 1.0 / 3, 1e-12);
}

// The shares of a real (host-staged) step, as the benchmark prints them.
TEST_F(TimedDeviceOpsTest, SharesOfAStepSumToOne) {
  LlamaModel model(cfg_, Precision::bf16, nullptr, Device::cuda);
  model.init_weights(9);
  OptimConfig oc;
  Optimizer opt(model.params(), oc, Precision::bf16);
  OpFamilyTimes t;
  const auto t0 = std::chrono::steady_clock::now();
  {
    ScopedOpTiming timing(nullptr);
    model.forward(tok_, tgt_, &w_);
    model.backward();
    opt.step(model.grads(), 1e-3);
    t = timing.times();
  }
  const double step = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double sum = 0;
  for (const StepShare& r : step_shares(t, step)) sum += r.share;
  EXPECT_NEAR(sum, 1.0, 1e-9);
  for (int f = 0; f < kOpFamilies; ++f) EXPECT_GT(t.calls[size_t(f)], 0) << op_family_name(OpFamily(f));
}

}  // namespace
}  // namespace lethe
