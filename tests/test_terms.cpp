// Every unlearning term's gradient against finite differences on the tiny model (float64):
// directional derivative along a random direction per parameter tensor, tolerance 1e-6
// relative (1e-8 absolute floor). Plus the properties the methods rely on.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/unlearn/terms.h"
#include "kernels/cross_entropy.h"
#include "kernels/optim.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

LlamaConfig tiny() {
  LlamaConfig c;
  c.vocab_size = 19;
  c.dim = 16;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 24;
  c.max_seq_len = 16;
  c.init_std = 0.3;
  return c;
}

UnlearnBatch batch(const LlamaConfig& c) {
  UnlearnBatch b;
  b.tokens = randint({3, 6}, c.vocab_size, 1);
  b.targets = randint({3, 6}, c.vocab_size, 2);
  b.targets.data<int32_t>()[5] = ops::kIgnoreIndex;  // padding at the end of row 0
  b.targets.data<int32_t>()[17] = ops::kIgnoreIndex;
  b.seq_ids = {4, 0, 7};
  b.step = 3;
  return b;
}

class Terms : public ::testing::TestWithParam<std::string> {};

TEST_P(Terms, GradientMatchesFiniteDifferences) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64), m(c, DType::f64);
  ref.init_weights(5);
  m.init_weights(5);
  // The trained model has moved away from the original: KL and RMU-retain are not at 0.
  for (size_t i = 0; i < m.params().size(); ++i) {
    Tensor d = randn(m.params()[i].shape(), DType::f64, 50 + i, 0.05);
    for (int64_t k = 0; k < d.numel(); ++k) m.params()[i].data<double>()[k] += d.data<double>()[k];
  }
  TermSpec s;
  s.type = GetParam();
  s.stream = "forget";
  s.beta = 0.7;
  s.delta = 0.3;
  s.layer = 1;
  s.steer = 2.0;
  s.seed = 11;
  auto term = make_term(s, &ref);
  UnlearnBatch b = batch(c);
  if (s.type == "npo") {
    // Cache reference log-likelihoods for sequence ids 0..7 from the original model.
    TokenDataset ds;
    ds.tokenizer = "bytes";
    ds.vocab_size = c.vocab_size;
    ds.offsets = {0};
    for (int d = 0; d < 8; ++d) {
      for (int k = 0; k < 7; ++k) ds.tokens.push_back((d * 7 + k * 3) % int(c.vocab_size));
      ds.offsets.push_back(int64_t(ds.tokens.size()));
    }
    SamplerConfig sc;
    sc.seq_len = 6;
    sc.shuffle = false;
    SequenceSampler sampler(ds, sc);
    term->prepare(ref, sampler, 3);
  }
  const double scale = -0.8;  // a signed weight, as GA uses
  m.grads().zero();
  const double L = term->accumulate(m, b, scale);
  EXPECT_NEAR(L, term->value(m, b), 1e-12 * std::max(1.0, std::abs(L)));
  EXPECT_TRUE(std::isfinite(L));
  for (size_t i = 0; i < m.params().size(); ++i) {
    Tensor dir = randn(m.params()[i].shape(), DType::f64, 900 + i);
    const double fd = scale * directional_fd(m.params()[i], dir, [&] { return term->value(m, b); });
    EXPECT_NEAR(dot(m.grads()[i], dir), fd, 1e-6 * std::abs(fd) + 1e-8) << s.type << " " << m.params().spec(i).name;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, Terms,
                         ::testing::Values("nll", "random_labels", "adversarial", "kl", "npo", "simnpo", "rmu_forget",
                                           "rmu_retain"));

TEST(TermProperties, KlIsZeroAtTheOriginalAndNpoStartsAtTwoLog2OverBeta) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64), m(c, DType::f64);
  ref.init_weights(5);
  m.init_weights(5);
  UnlearnBatch b = batch(c);
  TermSpec s{"kl", "retain"};
  EXPECT_NEAR(make_term(s, &ref)->value(m, b), 0.0, 1e-12);
  // NPO at theta = theta_ref: Delta = 0, L = -(2/beta) log(1/2).
  TermSpec n{"npo", "forget"};
  n.beta = 0.5;
  auto npo = make_term(n, &ref);
  TokenDataset ds;
  ds.tokenizer = "bytes";
  ds.vocab_size = c.vocab_size;
  ds.tokens = {1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5};
  ds.offsets = {0, 21};
  SamplerConfig sc;
  sc.seq_len = 6;
  sc.shuffle = false;
  SequenceSampler sampler(ds, sc);
  npo->prepare(ref, sampler, 2);
  UnlearnBatch fb;
  fb.tokens = Tensor::empty({2, 6}, DType::i32);
  fb.targets = Tensor::empty({2, 6}, DType::i32);
  for (int r = 0; r < 2; ++r) sampler.sequence(r, fb.tokens.data<int32_t>() + r * 6, fb.targets.data<int32_t>() + r * 6);
  fb.seq_ids = {0, 1};
  EXPECT_NEAR(npo->value(m, fb), 2 / 0.5 * std::log(2.0), 1e-10);
}

TEST(TermProperties, AdversarialTargetsAreTheOriginalsRunnerUpAtTheSamePosition) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64), m(c, DType::f64);
  ref.init_weights(8);
  m.init_weights(8);
  UnlearnBatch b = batch(c);
  // With theta = original, the adversarial loss equals the mean NLL of the runner-up tokens.
  const Tensor& logits = ref.forward_logits(b.tokens);
  const Tensor lg = logits.clone();
  double nll = 0;
  int n = 0;
  for (int64_t i = 0; i < 18; ++i) {
    const int32_t y = b.targets.data<int32_t>()[i];
    if (y == ops::kIgnoreIndex) continue;
    int64_t best = -1;
    double bv = -1e300, z = 0;
    for (int64_t j = 0; j < c.vocab_size; ++j) {
      const double v = lg.data<double>()[i * c.vocab_size + j];
      z += std::exp(v);
      if (j != y && v > bv) bv = v, best = j;
    }
    nll += std::log(z) - lg.data<double>()[i * c.vocab_size + best];
    ++n;
  }
  TermSpec s{"adversarial", "forget"};
  EXPECT_NEAR(make_term(s, &ref)->value(m, b), nll / n, 1e-10);
}

TEST(TermProperties, BadSpecsAreErrors) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64);
  EXPECT_THROW(make_term({"gradient_magic", "forget"}, &ref), Error);
  EXPECT_THROW(make_term({"nll", "holdout"}, &ref), Error);
  EXPECT_THROW(make_term({"kl", "retain"}, nullptr), Error);
  TermSpec r{"rmu_forget", "forget"};
  r.layer = 3;
  EXPECT_THROW(make_term(r, &ref), Error);
  TermSpec n{"npo", "forget"};
  n.beta = 0;
  EXPECT_THROW(make_term(n, &ref), Error);
}

}  // namespace
}  // namespace lethe
