// The whole model's hand-written backward against finite differences (float64), and the
// properties the training loop and unlearning terms rely on.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "engine/eval/nll.h"
#include "engine/model/llama.h"
#include "kernels/cross_entropy.h"
#include "kernels/optim.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

LlamaConfig tiny(bool tied, bool scaled) {
  LlamaConfig c;
  c.name = tied ? "tiny-tied" : "tiny-gqa";
  c.vocab_size = 23;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = tied ? 4 : 2;
  c.head_dim = tied ? 6 : 0;  // non-default head_dim: q_dim != dim
  c.ffn_dim = 24;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.max_seq_len = 16;
  c.tie_embeddings = tied;
  c.init_std = 0.3;  // large weights so every path carries signal
  if (scaled) {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = 4;
    c.rope_scaling.original_max_position_embeddings = 16;
  }
  return c;
}

void batch(const LlamaConfig& c, int64_t B, int64_t T, Tensor& tok, Tensor& tgt) {
  tok = randint({B, T}, c.vocab_size, 5);
  tgt = randint({B, T}, c.vocab_size, 6);
  tgt.data<int32_t>()[1] = ops::kIgnoreIndex;
}

// Directional derivative of the loss along a random direction, per parameter tensor:
// one FD pair covers every entry of the tensor. Tolerance 1e-6 relative (float64, h=1e-5).
void check_grads_fd(const LlamaConfig& c, bool recompute) {
  LlamaModel m(c, DType::f64);
  m.init_weights(11);
  // Norm weights away from 1 so their gradients are exercised.
  for (size_t i = 0; i < m.params().size(); ++i)
    if (m.params()[i].ndim() == 1) m.params()[i].copy_from(randn(m.params()[i].shape(), DType::f64, 100 + i, 0.2, 1.0));
  m.set_recompute(recompute);
  Tensor tok, tgt;
  batch(c, 2, 7, tok, tgt);
  m.grads().zero();
  m.forward(tok, tgt);
  m.backward();
  for (size_t i = 0; i < m.params().size(); ++i) {
    Tensor dir = randn(m.params()[i].shape(), DType::f64, 1000 + i);
    const double analytic = dot(m.grads()[i], dir);
    const double fd = directional_fd(m.params()[i], dir, [&] { return m.forward(tok, tgt); });
    EXPECT_NEAR(analytic, fd, 1e-6 * std::max(1.0, std::abs(fd))) << m.params().spec(i).name;
  }
}

TEST(ModelGrad, GqaUntiedLlama3RopeMatchesFiniteDifferences) { check_grads_fd(tiny(false, true), false); }
TEST(ModelGrad, TiedCustomHeadDimMatchesFiniteDifferences) { check_grads_fd(tiny(true, false), false); }
TEST(ModelGrad, RecomputeMatchesFiniteDifferences) { check_grads_fd(tiny(false, false), true); }

// Custom losses through forward_logits/backward_logits and forward_hidden/backward_hidden:
// L = <logits, R> and L = <h_layer, R>, checked by directional finite differences (1e-6).
TEST(ModelGrad, LogitsAndHiddenEntryPointsMatchFiniteDifferences) {
  LlamaConfig c = tiny(false, true);
  c.n_layers = 3;
  LlamaModel m(c, DType::f64);
  m.init_weights(21);
  m.set_recompute_layers(1);
  Tensor tok, tgt;
  batch(c, 2, 6, tok, tgt);
  const Tensor R = randn({12, c.vocab_size}, DType::f64, 5);
  m.grads().zero();
  m.forward_logits(tok);
  m.backward_logits(R);
  for (size_t i = 0; i < m.params().size(); ++i) {
    Tensor dir = randn(m.params()[i].shape(), DType::f64, 300 + i);
    const double fd = directional_fd(m.params()[i], dir, [&] { return dot(m.forward_logits(tok), R); });
    EXPECT_NEAR(dot(m.grads()[i], dir), fd, 1e-6 * std::max(1.0, std::abs(fd))) << m.params().spec(i).name;
  }
  const int64_t layer = 1;
  const Tensor Rh = randn({12, c.dim}, DType::f64, 6);
  m.grads().zero();
  m.forward_hidden(tok, layer);
  m.backward_hidden(Rh);
  for (size_t i = 0; i < m.params().size(); ++i) {
    Tensor dir = randn(m.params()[i].shape(), DType::f64, 400 + i);
    const double fd = directional_fd(m.params()[i], dir, [&] { return dot(m.forward_hidden(tok, layer), Rh); });
    EXPECT_NEAR(dot(m.grads()[i], dir), fd, 1e-6 * std::max(1.0, std::abs(fd))) << m.params().spec(i).name;
  }
  // Layers above `layer` get no gradient from a hidden-state loss.
  EXPECT_EQ(ops::sum_squares(m.grads().get("model.layers.2.mlp.down_proj.weight")), 0.0);
  EXPECT_THROW(m.backward_logits(R), Error);  // the last forward stopped at layer 1
}

TEST(Model, RecomputeGivesIdenticalGradients) {
  LlamaConfig c = tiny(false, true);
  c.n_layers = 3;
  Tensor tok, tgt;
  batch(c, 3, 9, tok, tgt);
  LlamaModel ref(c);
  ref.init_weights(3);
  ref.grads().zero();
  const double loss = ref.forward(tok, tgt);
  ref.backward();
  for (int64_t n = 1; n <= c.n_layers; ++n) {  // some layers, then all
    LlamaModel m(c);
    m.init_weights(3);
    m.set_recompute_layers(n);
    m.grads().zero();
    EXPECT_EQ(m.forward(tok, tgt), loss);
    m.backward();
    EXPECT_EQ(values(ref.grads().flat()), values(m.grads().flat())) << n << " recomputed layers";
  }
  LlamaModel m(c);
  EXPECT_THROW(m.set_recompute_layers(4), Error);
}

TEST(Model, InitIsIndependentOfThreadCount) {
  const LlamaConfig c = tiny(false, false);
  LlamaModel a(c), b(c);
  omp_set_num_threads(1);
  a.init_weights(9);
  omp_set_num_threads(2);
  b.init_weights(9);
  EXPECT_EQ(values(a.params().flat()), values(b.params().flat()));
  // Matrices ~ N(0, init_std), norms = 1.
  EXPECT_EQ(a.params().get("model.norm.weight").data<float>()[0], 1.0f);
}

TEST(Model, LogprobsAndWeightedLoss) {
  const LlamaConfig c = tiny(false, false);
  LlamaModel m(c, DType::f64);
  m.init_weights(4);
  Tensor tok, tgt;
  batch(c, 2, 5, tok, tgt);
  m.set_keep_logits(true);
  const double mean_loss = m.forward(tok, tgt);
  // logprobs are log_softmax(logits)[target], 0 where masked; the default loss is their mean.
  const Tensor lp = m.logprobs().clone(), logits = m.logits().clone();
  double sum = 0;
  int valid = 0;
  for (int64_t i = 0; i < 10; ++i) {
    const int32_t t = tgt.data<int32_t>()[i];
    if (t == ops::kIgnoreIndex) {
      EXPECT_EQ(lp.data<double>()[i], 0.0);
      continue;
    }
    double z = 0;
    for (int64_t j = 0; j < c.vocab_size; ++j) z += std::exp(logits.data<double>()[i * c.vocab_size + j]);
    EXPECT_NEAR(lp.data<double>()[i], logits.data<double>()[i * c.vocab_size + t] - std::log(z), 1e-12);
    sum += lp.data<double>()[i];
    ++valid;
  }
  EXPECT_NEAR(mean_loss, -sum / valid, 1e-12);

  // Weights of -1 (gradient ascent) negate loss and every gradient of weights +1.
  Tensor wp = Tensor::empty({2, 5}, DType::f32), wn = Tensor::empty({2, 5}, DType::f32);
  for (int64_t i = 0; i < 10; ++i) {
    wp.data<float>()[i] = 1.0f;
    wn.data<float>()[i] = -1.0f;
  }
  m.grads().zero();
  const double lpos = m.forward(tok, tgt, &wp);
  m.backward();
  const Tensor gpos = m.grads().flat().clone();
  m.grads().zero();
  const double lneg = m.forward(tok, tgt, &wn);
  m.backward();
  EXPECT_NEAR(lpos, -sum, 1e-12);
  EXPECT_NEAR(lneg, sum, 1e-12);
  ops::scale_(m.grads().flat(), -1.0);
  EXPECT_LE(scaled_err(m.grads().flat(), gpos), 1e-14);
}

TEST(Model, RejectsBadBatches) {
  const LlamaConfig c = tiny(false, false);
  LlamaModel m(c);
  m.init_weights(1);
  Tensor tok = Tensor::from<int32_t>({1, 3}, {1, 2, 23}), tgt = Tensor::from<int32_t>({1, 3}, {2, 3, 4});
  EXPECT_THROW(m.forward(tok, tgt), Error);  // token 23 >= vocab 23
  Tensor long_tok = randint({1, 17}, 23, 1), long_tgt = randint({1, 17}, 23, 2);
  EXPECT_THROW(m.forward(long_tok, long_tgt), Error);  // T > max_seq_len
  EXPECT_THROW(m.backward(), Error);                   // no successful forward yet
}

// evaluate_nll's per-sequence scores: each is its sequence's mean NLL, so weighted by the
// sequences' target counts they give back the overall mean (1e-12).
TEST(Eval, SequenceNllAveragesToTheMean) {
  const LlamaConfig c = tiny(false, false);
  LlamaModel m(c, DType::f64);
  m.init_weights(2);
  TokenDataset ds;
  ds.tokenizer = "bytes";
  ds.vocab_size = c.vocab_size;
  for (int i = 0; i < 29; ++i) ds.tokens.push_back((i * 7) % int(c.vocab_size));
  ds.offsets = {0, 11, 29};
  const NllResult r = evaluate_nll(m, ds, 6, 2);
  // doc0: 10 targets -> chunks of 6 and 4; doc1: 17 targets -> 6, 6, 5.
  ASSERT_EQ(r.sequence_nll.size(), 5u);
  const double counts[5] = {6, 4, 6, 6, 5};
  double sum = 0;
  for (size_t i = 0; i < 5; ++i) sum += r.sequence_nll[i] * counts[i];
  EXPECT_EQ(r.tokens, 27);
  EXPECT_NEAR(sum / 27, r.mean_nll(), 1e-12);
}

TEST(Config, ParamCountMatchesLlama2Published) {
  LlamaConfig c;
  c.vocab_size = 32000;
  c.dim = 4096;
  c.n_layers = 32;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.ffn_dim = 11008;
  EXPECT_EQ(c.n_params(), 6738415616);  // meta-llama/Llama-2-7b-hf
  int64_t sum = 0;
  for (const auto& s : llama_param_specs(c)) sum += shape_numel(s.shape);
  EXPECT_EQ(sum, c.n_params());
}

}  // namespace
}  // namespace lethe
