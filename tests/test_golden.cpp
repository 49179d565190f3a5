// Golden test against transformers' LlamaForCausalLM (fixtures from
// tools/golden/make_llama_golden.py, float64 reference math): logits, loss, per-token
// log-probs, every parameter's gradient, and 3 AdamW steps with clipping.
// Tolerances (scaled max error, see test_util.h):
//   f64 engine: 1e-10 on logits/logprobs/grads, 1e-12 relative on losses, 1e-9 on weights after AdamW
//   f32 engine: 2e-5 on logits/logprobs, 1e-4 on grads, 1e-5 relative on losses; weights after
//     AdamW: at most 1% of entries off by more than 1e-4, none by more than 2 * lr * steps.
//     (Adam's update is ~lr * sign(g) where |g| is tiny, so float32 rounding of a near-zero
//     gradient can flip a single entry's step; float64 shows the logic itself is exact.)
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

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
  Optimizer opt(m.params(), oc);
  const Tensor ref_losses = f.tensor("adamw_losses"), ref_norms = f.tensor("adamw_grad_norms");
  const int steps = adam["steps"];
  for (int s = 0; s <= steps; ++s) {
    m.grads().zero();
    const double l = m.forward(tok, tgt);
    const double rl = ref_losses.data<double>()[s];
    EXPECT_NEAR(l, rl, tol.loss * rl) << "loss before AdamW step " << s;
    if (s == steps) break;
    m.backward();
    const double norm = opt.step(m.grads(), adam["lr"].get<double>());
    EXPECT_NEAR(norm, ref_norms.data<double>()[s], tol.grads * ref_norms.data<double>()[s]) << "grad norm, step " << s;
  }
  int64_t off = 0, total = 0;
  for (size_t i = 0; i < m.params().size(); ++i) {
    const std::string& name = m.params().spec(i).name;
    const Tensor ref = f.tensor("weight_after." + name);
    if (dt == DType::f64) {
      EXPECT_LE(scaled_err(m.params()[i], ref), tol.weights) << name;
      continue;
    }
    const auto a = values(m.params()[i]), b = values(ref);
    for (size_t j = 0; j < a.size(); ++j) {
      EXPECT_LE(std::abs(a[j] - b[j]), 2 * adam["lr"].get<double>() * steps) << name << "[" << j << "]";
      off += std::abs(a[j] - b[j]) > tol.weights;
    }
    total += int64_t(a.size());
  }
  if (dt != DType::f64) {
    EXPECT_LE(double(off), 0.01 * double(total)) << off << " of " << total << " weights off by > " << tol.weights;
  }
}

const Tol kF64{1e-10, 1e-10, 1e-12, 1e-9};
const Tol kF32{2e-5, 1e-4, 1e-5, 1e-4};

TEST(GoldenTransformers, GqaUntiedLlama3RopeFloat64) { run_golden("llama_gqa_untied.safetensors", DType::f64, kF64); }
TEST(GoldenTransformers, GqaUntiedLlama3RopeFloat32) { run_golden("llama_gqa_untied.safetensors", DType::f32, kF32); }
TEST(GoldenTransformers, TiedFloat64) { run_golden("llama_tied.safetensors", DType::f64, kF64); }
TEST(GoldenTransformers, TiedFloat32) { run_golden("llama_tied.safetensors", DType::f32, kF32); }

}  // namespace
}  // namespace lethe
