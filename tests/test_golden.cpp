// Golden test against transformers' LlamaForCausalLM (fixtures from
// tools/golden/make_llama_golden.py, float64 reference math): logits, loss, per-token
// log-probs, every parameter's gradient, and 3 AdamW steps with clipping.
// Tolerances (scaled max error, see test_util.h):
//   f64 engine: 1e-10 on logits/logprobs/grads, 1e-12 relative on losses, 1e-9 on weights
//     after AdamW, along the reference's whole trajectory.
//   f32 engine, at the fixture's weights (step 0): 2e-5 on logits/logprobs, 1e-4 on grads,
//     1e-5 relative on the loss. These are rounding bounds of one f32 forward/backward: a
//     dot product of length K carries a relative error up to K*u (u = 2^-24 = 6e-8); the
//     longest here is K = 256 (1.5e-5), and the gradients pass through ~2 such products
//     per layer and the softmax backward (1e-4).
//   f32 engine after AdamW steps: NOT compared with the reference trajectory. Adam's first
//     update is lr * g/(|g| + eps) = lr * sign(g), so a gradient entry within rounding of
//     zero can take the opposite step; the weights then differ by 2*lr in that entry and
//     the trajectories drift apart by an amount that depends on which entries round which
//     way, i.e. on the BLAS kernel (measured: 1.4e-5 relative in the loss after 3 steps on
//     one OpenBLAS kernel, 5e-6 on another). Instead each step is checked in lockstep with
//     the f64 engine started from the f32 model's own weights and fed its own gradients:
//       - loss and gradients at the same weights: the step-0 bounds above;
//       - gradient norm: both sum squares in double, so 1e-12 relative;
//       - the updated weights, entry by entry: the f32 update rounds w*decay (and w - U)
//         once each, and the moments (carried over steps), the clipped gradient and the
//         ratio m/(sqrt(v)+eps) a few times each (16 roundings in all, generously). The
//         moments' roundings are relative to the terms they sum, not to m (which can
//         cancel), so with m_hat = sum_i a_i g_i and v_hat = sum_i b_i g_i^2 the error of
//         the update is at most 16u * lr * S, S = sqrt(sum_i a_i^2 / b_i) >= sum_i |a_i g_i|
//         / sqrt(v_hat) (Cauchy-Schwarz; S = 1 at step 1): |w32 - w64| <=
//         2u(|w_before| + |w64|) + 16u * lr * S.
//     and the final weights against transformers' by the sign-flip argument: none off by
//     more than 2*lr*steps, at most 1% of entries off by more than 1e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/io/safetensors.h"
#include "engine/model/llama.h"
#include "engine/optim/optimizer.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using json = nlohmann::json;
using namespace lethe::test;

struct Tol {
  double logits, grads, loss, weights;
};

LlamaConfig config_from(const json& j) {
  LlamaConfig c;
  c.vocab_size = j["vocab_size"];
  c.dim = j["dim"];
  c.n_layers = j["n_layers"];
  c.n_heads = j["n_heads"];
  c.n_kv_heads = j["n_kv_heads"];
  c.head_dim = j["head_dim"];
  c.ffn_dim = j["ffn_dim"];
  c.norm_eps = j["norm_eps"];
  c.rope_theta = j["rope_theta"];
  c.tie_embeddings = j["tie_embeddings"];
  c.max_seq_len = j["max_seq_len"];
  if (!j["rope_scaling"].is_null()) {
    const json& r = j["rope_scaling"];
    c.rope_scaling.type = r["type"];
    c.rope_scaling.factor = r["factor"];
    c.rope_scaling.low_freq_factor = r["low_freq_factor"];
    c.rope_scaling.high_freq_factor = r["high_freq_factor"];
    c.rope_scaling.original_max_position_embeddings = r["original_max_position_embeddings"];
  }
  return c;
}

void run_golden(const std::string& file, DType dt, const Tol& tol) {
  const auto f = SafetensorsFile::open(std::string(LETHE_SOURCE_DIR) + "/tests/golden/" + file);
  const LlamaConfig cfg = config_from(json::parse(f.metadata().at("config")));
  const json adam = json::parse(f.metadata().at("adamw"));
  LlamaModel m(cfg, dt);
  m.set_keep_logits(true);  // the test reads logits() after forward()
  for (size_t i = 0; i < m.params().size(); ++i)
    m.params()[i].copy_from(f.tensor("weight." + m.params().spec(i).name));
  // The fixture must hold exactly our parameters: no extra, none missing.
  int weights_in_file = 0;
  for (const auto& n : f.names()) weights_in_file += n.rfind("weight.", 0) == 0;
  ASSERT_EQ(size_t(weights_in_file), m.params().size());

  const Tensor tok = f.tensor("input_ids"), tgt = f.tensor("targets");
  m.grads().zero();
  const double loss = m.forward(tok, tgt);
  m.backward();
  const double ref_loss = f.tensor("loss").data<double>()[0];
  EXPECT_NEAR(loss, ref_loss, tol.loss * ref_loss);
  EXPECT_LE(scaled_err(m.logits(), f.tensor("logits")), tol.logits);
  EXPECT_LE(scaled_err(m.logprobs(), f.tensor("logprobs")), tol.logits);
  for (size_t i = 0; i < m.grads().size(); ++i) {
    const std::string& name = m.params().spec(i).name;
    EXPECT_LE(scaled_err(m.grads()[i], f.tensor("grad." + name)), tol.grads) << name;
  }

  OptimConfig oc;
  oc.beta1 = adam["beta1"];
  oc.beta2 = adam["beta2"];
  oc.eps = adam["eps"];
  oc.weight_decay = adam["weight_decay"];
  oc.grad_clip = adam["grad_clip"];
  const double lr = adam["lr"].get<double>();
  const int steps = adam["steps"];
  const Tensor ref_losses = f.tensor("adamw_losses"), ref_norms = f.tensor("adamw_grad_norms");
  Optimizer opt(m.params(), oc);
  if (dt == DType::f64) {
    for (int s = 0; s <= steps; ++s) {
      m.grads().zero();
      const double l = m.forward(tok, tgt);
      const double rl = ref_losses.data<double>()[s];
      EXPECT_NEAR(l, rl, tol.loss * rl) << "loss before AdamW step " << s;
      if (s == steps) break;
      m.backward();
      const double norm = opt.step(m.grads(), lr);
      EXPECT_NEAR(norm, ref_norms.data<double>()[s], tol.grads * ref_norms.data<double>()[s]) << "grad norm, step " << s;
    }
    for (size_t i = 0; i < m.params().size(); ++i)
      EXPECT_LE(scaled_err(m.params()[i], f.tensor("weight_after." + m.params().spec(i).name)), tol.weights)
          << m.params().spec(i).name;
    return;
  }

  // f32: each step in lockstep with an f64 shadow that starts from the f32 weights.
  LlamaModel shadow(cfg, DType::f64);
  shadow.set_keep_logits(true);  // the test reads logits() after forward()
  Optimizer shadow_opt(shadow.params(), oc);
  constexpr double u = 0x1p-24;
  for (int s = 0; s <= steps; ++s) {
    for (size_t i = 0; i < m.params().size(); ++i) shadow.params()[i].copy_from(m.params()[i]);
    m.grads().zero();
    shadow.grads().zero();
    const double l = m.forward(tok, tgt), l64 = shadow.forward(tok, tgt);
    EXPECT_NEAR(l, l64, tol.loss * l64) << "f32 loss against f64 at the same weights, before AdamW step " << s;
    if (s == steps) break;
    m.backward();
    shadow.backward();
    for (size_t i = 0; i < m.grads().size(); ++i)
      EXPECT_LE(scaled_err(m.grads()[i], shadow.grads()[i]), tol.grads)
          << m.params().spec(i).name << ", gradient before AdamW step " << s;
    // The shadow optimizer sees exactly the f32 gradients, so only arithmetic differs.
    for (size_t i = 0; i < m.grads().size(); ++i) shadow.grads()[i].copy_from(m.grads()[i]);
    const std::vector<Tensor> before = [&] {
      std::vector<Tensor> b;
      for (size_t i = 0; i < shadow.params().size(); ++i) b.push_back(shadow.params()[i].clone());
      return b;
    }();
    const double norm = opt.step(m.grads(), lr), norm64 = shadow_opt.step(shadow.grads(), lr);
    EXPECT_NEAR(norm, norm64, 1e-12 * norm64) << "grad norm, step " << s;
    for (size_t i = 0; i < m.params().size(); ++i) {
      const auto w32 = values(m.params()[i]), w64 = values(shadow.params()[i]), w0 = values(before[i]);
      int64_t bad = 0;
      double worst = 0;
      // S bounds sum_i |a_i g_i| / sqrt(sum_i b_i g_i^2) (Cauchy-Schwarz), the absolute size
      // of the terms the moments add up, in units of the update: the roundings of m and v
      // are relative to those terms, not to m itself, which can cancel to near zero.
      const int t = s + 1;
      double S2 = 0;
      for (int i = 1; i <= t; ++i) {
        const double a = (1 - oc.beta1) * std::pow(oc.beta1, t - i) / (1 - std::pow(oc.beta1, t));
        const double b = (1 - oc.beta2) * std::pow(oc.beta2, t - i) / (1 - std::pow(oc.beta2, t));
        S2 += a * a / b;
      }
      for (size_t j = 0; j < w32.size(); ++j) {
        const double bound = 2 * u * (std::abs(w0[j]) + std::abs(w64[j])) + 16 * u * lr * std::sqrt(S2);
        bad += std::abs(w32[j] - w64[j]) > bound;
        worst = std::max(worst, std::abs(w32[j] - w64[j]) / bound);
      }
      EXPECT_EQ(bad, 0) << m.params().spec(i).name << ": AdamW step " << s << " off the f64 update from the same "
                        << "weights and gradients (worst at " << worst << " x the rounding bound)";
    }
  }
  int64_t off = 0, total = 0;
  for (size_t i = 0; i < m.params().size(); ++i) {
    const std::string& name = m.params().spec(i).name;
    const auto a = values(m.params()[i]), b = values(f.tensor("weight_after." + name));
    for (size_t j = 0; j < a.size(); ++j) {
      EXPECT_LE(std::abs(a[j] - b[j]), 2 * lr * steps) << name << "[" << j << "]";
      off += std::abs(a[j] - b[j]) > tol.weights;
    }
    total += int64_t(a.size());
  }
  EXPECT_LE(double(off), 0.01 * double(total)) << off << " of " << total << " weights off by > " << tol.weights;
}

const Tol kF64{1e-10, 1e-10, 1e-12, 1e-9};
const Tol kF32{2e-5, 1e-4, 1e-5, 1e-4};

TEST(GoldenTransformers, GqaUntiedLlama3RopeFloat64) { run_golden("llama_gqa_untied.safetensors", DType::f64, kF64); }
TEST(GoldenTransformers, GqaUntiedLlama3RopeFloat32) { run_golden("llama_gqa_untied.safetensors", DType::f32, kF32); }
TEST(GoldenTransformers, TiedFloat64) { run_golden("llama_tied.safetensors", DType::f64, kF64); }
TEST(GoldenTransformers, TiedFloat32) { run_golden("llama_tied.safetensors", DType::f32, kF32); }

}  // namespace
}  // namespace lethe
