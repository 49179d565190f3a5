// The NaN / Inf locator of debug mode (engine/model/numerics_guard.h): the first check
// that fails must name the layer, pass and tensor where the value appeared.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "engine/core/bf16.h"
#include "engine/model/llama.h"
#include "kernels/host_staged_device.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

LlamaConfig small() {
  LlamaConfig c;
  c.name = "numerics";
  c.vocab_size = 31;
  c.dim = 16;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 24;
  c.max_seq_len = 16;
  c.tie_embeddings = false;
  return c;
}

struct Fixture {
  LlamaModel m{small(), DType::f32};
  Tensor tok = randint({2, 8}, 31, 3), tgt = randint({2, 8}, 31, 4);
  explicit Fixture(bool debug) {
    m.init_weights(7);
    m.numerics().set_enabled(debug);
  }
  Tensor& weight(const std::string& name) { return m.params().get(name); }
};

// The message of the NumericsError `f` throws; fails the test if it throws nothing.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const NumericsError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no NumericsError";
  return "";
}

TEST(Numerics, ScanFindsFirstNonFiniteInEveryFloatType) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    Tensor t = Tensor::zeros({3, 4}, DType::f32);
    t.data<float>()[6] = -inf;
    t.data<float>()[9] = nan;
    const NonFinite r = scan_nonfinite(t.to(dt));
    EXPECT_EQ(r.count, 2) << dtype_name(dt);
    EXPECT_EQ(r.first, 6) << dtype_name(dt);
    EXPECT_TRUE(std::isinf(r.value) && r.value < 0) << dtype_name(dt);
  }
  EXPECT_EQ(scan_nonfinite(Tensor::zeros({5}, DType::f32)).count, 0);
  EXPECT_EQ(scan_nonfinite(Tensor::zeros({5}, DType::f32)).first, -1);
  EXPECT_EQ(index_str({3, 4}, 6), "[1, 2]");
  EXPECT_EQ(index_str({2, 3, 4}, 23), "[1, 2, 3]");
}

// On a device the scan is the device's op (in place: two numbers back), and only the first
// bad value is copied to the host; served here by the host-staged device.
TEST(Numerics, ScanOfADeviceTensorRunsOnTheDevice) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  ScopedHostStagedDevice device;
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor t = Tensor::zeros({3, 4}, DType::f32);
    t.data<float>()[6] = -inf;
    t.data<float>()[9] = nan;
    const Tensor on = t.to(dt).to(Device::cuda);
    const int64_t ops_before = device.ops_run();
    const NonFinite r = scan_nonfinite(on);
    EXPECT_EQ(device.ops_run(), ops_before + 1) << dtype_name(dt);
    EXPECT_EQ(r.count, 2) << dtype_name(dt);
    EXPECT_EQ(r.first, 6) << dtype_name(dt);
    EXPECT_TRUE(std::isinf(r.value) && r.value < 0) << dtype_name(dt);
  }
  EXPECT_EQ(scan_nonfinite(Tensor::zeros({5}, DType::bf16).to(Device::cuda)).first, -1);
}

// A bf16 model on the device names a bad parameter as the emulation does.
TEST(Numerics, DeviceModelNamesTheSameParameter) {
  auto message = [](Device device) {
    LlamaModel m(small(), Precision::bf16, nullptr, device);
    m.init_weights(7);
    m.numerics().set_enabled(true);
    Tensor w = to_host(m.params().get("model.layers.1.mlp.down_proj.weight"));
    w.data<float>()[2 * 24 + 5] = std::nanf("");
    m.params().get("model.layers.1.mlp.down_proj.weight").copy_from(w);
    return error_of([&] { m.forward(randint({2, 8}, 31, 3), randint({2, 8}, 31, 4)); });
  };
  const std::string cpu = message(Device::cpu);
  ScopedHostStagedDevice device;
  EXPECT_EQ(message(Device::cuda), cpu);
  EXPECT_NE(cpu.find("parameter model.layers.1.mlp.down_proj.weight [16,24] holds first nan at [2, 5]"),
            std::string::npos) << cpu;
}

TEST(Numerics, OffByDefaultWithoutDebugMode) {
  Fixture f(false);
  f.weight("model.layers.1.mlp.down_proj.weight").data<float>()[5] = std::nanf("");
  EXPECT_TRUE(std::isnan(f.m.forward(f.tok, f.tgt)));  // no throw: the trainers' loss check stops the run
}

TEST(Numerics, NamesTheNonFiniteParameterBeforeTheForward) {
  Fixture f(true);
  f.m.numerics().set_context("step 7, term forget_ga");
  Tensor& w = f.weight("model.layers.1.mlp.down_proj.weight");  // [16, 24]
  w.data<float>()[2 * 24 + 5] = std::nanf("");
  const std::string msg = error_of([&] { f.m.forward(f.tok, f.tgt); });
  EXPECT_NE(msg.find("non-finite value at step 7, term forget_ga: parameter model.layers.1.mlp.down_proj.weight"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("first nan at [2, 5] (1 of 384 entries non-finite) before the forward"), std::string::npos)
      << msg;
}

TEST(Numerics, NamesTheOpThatOverflowed) {
  Fixture f(true);
  // Finite weights whose product overflows f32: layer 1's fused gate/up projection is the
  // first tensor to hold an Inf, in its up half (columns 24..47; the gate half stays finite).
  Tensor& w = f.weight("model.layers.1.mlp.up_proj.weight");
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = 3e38f;
  const std::string msg = error_of([&] { f.m.forward(f.tok, f.tgt); });
  EXPECT_NE(msg.find("layer 1 forward, mlp.gate_proj and mlp.up_proj output [16,48]: first "), std::string::npos)
      << msg;
  EXPECT_NE(msg.find(" at [0, 24]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("everything it was computed from is finite, so this op produced it"), std::string::npos) << msg;
}

TEST(Numerics, NamesTheFirstNonFiniteGradient) {
  Fixture f(true);
  f.m.forward_logits(f.tok);
  // A NaN in the loss gradient is reported as such, at its position.
  Tensor d = Tensor::zeros({16, 31}, DType::f32);
  d.data<float>()[3 * 31 + 7] = std::nanf("");
  std::string msg = error_of([&] { f.m.backward_logits(d); });
  EXPECT_NE(msg.find("backward, gradient of the loss with respect to the logits [16,31]: first nan at [3, 7]"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("it came from the loss"), std::string::npos) << msg;
  // Finite but huge: the lm_head weight gradient dW[v,k] = sum_t d[t,v] h[t,k] (h the final
  // norm's output) is the first to overflow. With d of mixed signs against h a BLAS kernel
  // may meet +inf and -inf partial sums and return NaN (kernels differ in order), so d
  // takes the sign of h[t,0]: column 0 then sums only positive terms and overflows to +inf
  // on any kernel, and [0, 0] is the first entry scanned.
  Tensor x = f.m.forward_hidden(f.tok, small().n_layers - 1).clone();  // the final norm's input
  const float w0 = f.weight("model.norm.weight").data<float>()[0];
  double column0 = 0;
  for (int64_t t = 0; t < 16; ++t) {
    double ms = 0;
    for (int64_t k = 0; k < 16; ++k) ms += double(x.data<float>()[t * 16 + k]) * x.data<float>()[t * 16 + k] / 16;
    const double h = x.data<float>()[t * 16] / std::sqrt(ms + small().norm_eps) * w0;
    column0 += std::abs(h);
    for (int64_t v = 0; v < 31; ++v) d.data<float>()[t * 31 + v] = h >= 0 ? 3e38f : -3e38f;
  }
  // 3e38 * sum_t |h[t,0]| must exceed FLT_MAX = 3.4e38 with room for rounding.
  ASSERT_GT(column0, 1.2) << "h[:,0] too small for the overflow below";
  f.m.grads().zero();
  f.m.forward_logits(f.tok);
  msg = error_of([&] { f.m.backward_logits(d); });
  EXPECT_NE(msg.find("backward, gradient of lm_head.weight [31,16]: first +inf at [0, 0]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(overflow)"), std::string::npos) << msg;
  // Inside a layer: a huge gradient at layer 1's output passes the MLP and the attention's
  // output projection finite (their inputs are small) and first overflows in the v
  // projection's weight gradient, a sum over tokens of dv x input_layernorm output.
  f.m.grads().zero();
  f.m.forward_hidden(f.tok, 1);
  Tensor dh = Tensor::zeros({16, 16}, DType::f32);
  for (int64_t i = 0; i < dh.numel(); ++i) dh.data<float>()[i] = 3e38f;
  msg = error_of([&] { f.m.backward_hidden(dh); });
  EXPECT_NE(msg.find("layer 1 backward, gradient of self_attn.v_proj.weight [8,16]: first +inf"), std::string::npos)
      << msg;
}

TEST(Numerics, FiniteRunIsUnchangedByTheChecks) {
  Fixture on(true), off(false);
  const double a = on.m.forward(on.tok, on.tgt), b = off.m.forward(off.tok, off.tgt);
  EXPECT_EQ(a, b);
  on.m.backward();
  off.m.backward();
  for (size_t i = 0; i < on.m.grads().size(); ++i)
    EXPECT_EQ(values(on.m.grads()[i]), values(off.m.grads()[i])) << on.m.grads().spec(i).name;
}

}  // namespace
}  // namespace lethe
