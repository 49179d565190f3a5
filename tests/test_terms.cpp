// Every unlearning term's gradient against finite differences on the tiny model (float64):
// directional derivative along a random direction per parameter tensor, tolerance 1e-6
// relative (1e-8 absolute floor). Plus the properties the methods rely on.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

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

// Eight documents of seven tokens as 6-token sequences (ids 0..7 in dataset order), for
// the terms that read the stream in prepare() (NPO's cached reference log-likelihoods,
// adaptive RMU's activation norm).
struct SmallStream {
  explicit SmallStream(const LlamaConfig& c) {
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
    sampler = std::make_unique<SequenceSampler>(ds, sc);
  }
  TokenDataset ds;
  std::unique_ptr<SequenceSampler> sampler;
};

// A term type, or type:variant for the options that change the formula.
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
  const std::string param = GetParam(), variant = param.find(':') == std::string::npos ? "" : param.substr(param.find(':') + 1);
  TermSpec s;
  s.type = param.substr(0, param.find(':'));
  s.stream = "forget";
  s.beta = 0.7;
  s.delta = 0.3;
  s.layer = 1;
  s.steer = 2.0;
  s.seed = 11;
  s.alpha = 0.7;
  s.gamma = 1.5;
  if (variant == "uniform") s.label_source = "uniform";
  if (variant == "top_k_top_p") s.top_k = 5, s.top_p = 0.6;
  if (variant == "adaptive") s.steering = "adaptive";
  // The rows' NLL per token on this model are 3.51, 3.43 and 3.31: F = 8 pushes every row,
  // F = 3.47 the last two only (the loss has a kink only where a row's NLL equals F).
  if (variant == "all") s.flood = 8.0;
  if (variant == "some") s.flood = 3.47;
  auto term = make_term(s, &ref);
  UnlearnBatch b = batch(c);
  SmallStream stream(c);
  term->prepare(ref, *stream.sampler, 3);
  const double scale = -0.8;  // a signed weight, as GA uses
  m.grads().zero();
  const double L = term->accumulate(m, b, scale);
  EXPECT_NEAR(L, term->value(m, b), 1e-12 * std::max(1.0, std::abs(L)));
  EXPECT_TRUE(std::isfinite(L));
  for (size_t i = 0; i < m.params().size(); ++i) {
    Tensor dir = randn(m.params()[i].shape(), DType::f64, 900 + i);
    const double fd = scale * directional_fd(m.params()[i], dir, [&] { return term->value(m, b); });
    EXPECT_NEAR(dot(m.grads()[i], dir), fd, 1e-6 * std::abs(fd) + 1e-8) << param << " " << m.params().spec(i).name;
  }
}

const std::vector<std::string> kChecked{"nll",         "random_labels", "random_labels:top_k_top_p", "random_labels:uniform",
                                       "adversarial", "kl",            "npo",                       "simnpo",
                                       "wga",         "flood:all",     "flood:some",                "undial",
                                       "rmu_forget",  "rmu_forget:adaptive", "rmu_retain"};

INSTANTIATE_TEST_SUITE_P(AllTypes, Terms, ::testing::ValuesIn(kChecked),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           for (char& ch : n)
                             if (ch == ':') ch = '_';
                           return n;
                         });

// Every type of term_types() has a gradient check above.
TEST(TermProperties, EveryTypeHasAFiniteDifferenceCheck) {
  for (const auto& t : term_types()) {
    bool found = false;
    for (const auto& p : kChecked) found |= p.substr(0, p.find(':')) == t;
    EXPECT_TRUE(found) << t;
  }
}


// Full-vocabulary softmax of one logits row (f64 model).
std::vector<double> row_softmax(const Tensor& logits, int64_t i) {
  const int64_t V = logits.dim(1);
  std::vector<double> p(static_cast<size_t>(V));
  double mx = -1e300, z = 0;
  for (int64_t j = 0; j < V; ++j) mx = std::max(mx, logits.data<double>()[i * V + j]);
  for (int64_t j = 0; j < V; ++j) z += (p[size_t(j)] = std::exp(logits.data<double>()[i * V + j] - mx));
  for (double& v : p) v /= z;
  return p;
}

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

// The seed study's default random labels: drawn from the original model's distribution at
// the same position, limited to its top_k ids and then its top_p nucleus.
TEST(TermProperties, RandomLabelsFromTheReferenceFollowItsTopKTopPDistribution) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64);
  ref.init_weights(9);
  const UnlearnBatch b = batch(c);
  const Tensor logits = ref.forward_logits(b.tokens).clone();
  const int64_t N = logits.dim(0), V = c.vocab_size;
  const int32_t* tgt = b.targets.data<int32_t>();
  // The distribution a (top_k, top_p) draw follows at row i: the k most likely ids, then the
  // most likely of those up to the first whose cumulative probability exceeds top_p.
  auto expected = [&](int64_t i, int64_t k, double top_p) {
    std::vector<double> p = row_softmax(logits, i);
    std::vector<int> order(static_cast<size_t>(V));
    for (int j = 0; j < V; ++j) order[size_t(j)] = j;
    std::sort(order.begin(), order.end(), [&](int a, int c2) { return p[size_t(a)] > p[size_t(c2)]; });
    std::vector<double> q(size_t(V), 0.0);
    double z = 0;
    for (int64_t r = 0; r < (k ? k : V); ++r) z += p[size_t(order[size_t(r)])];
    double cum = 0, kept = 0;
    for (int64_t r = 0; r < (k ? k : V); ++r) {
      const int j = order[size_t(r)];
      q[size_t(j)] = p[size_t(j)];
      kept += p[size_t(j)];
      if ((cum += p[size_t(j)] / z) > top_p) break;
    }
    for (double& v : q) v /= kept;
    return q;
  };
  struct Case {
    int64_t top_k;
    double top_p;
  };
  for (const Case cs : {Case{0, 1.0}, Case{4, 1.0}, Case{0, 0.5}, Case{6, 0.7}, Case{1, 1.0}}) {
    SCOPED_TRACE(::testing::Message() << "top_k " << cs.top_k << " top_p " << cs.top_p);
    TermSpec s{"random_labels", "forget"};
    s.seed = 5;
    s.top_k = cs.top_k;
    s.top_p = cs.top_p;
    const int steps = 2000;
    std::vector<std::vector<double>> count(size_t(N), std::vector<double>(size_t(V), 0.0));
    UnlearnBatch sb = b;
    for (int st = 0; st < steps; ++st) {
      sb.step = st;
      const Tensor y = draw_random_labels(s, ref, sb);
      for (int64_t i = 0; i < N; ++i) {
        if (tgt[i] == ops::kIgnoreIndex) {
          ASSERT_EQ(y.data<int32_t>()[i], ops::kIgnoreIndex);
          continue;
        }
        count[size_t(i)][size_t(y.data<int32_t>()[i])] += 1;
      }
    }
    for (int64_t i = 0; i < N; ++i) {
      if (tgt[i] == ops::kIgnoreIndex) continue;
      const std::vector<double> q = expected(i, cs.top_k, cs.top_p);
      for (int64_t j = 0; j < V; ++j) {
        const double freq = count[size_t(i)][size_t(j)] / steps, qj = q[size_t(j)];
        if (qj == 0) EXPECT_EQ(freq, 0.0) << "row " << i << " id " << j;
        // Five binomial standard deviations: a flake about once in 10^6 comparisons.
        else EXPECT_NEAR(freq, qj, 5 * std::sqrt(qj * (1 - qj) / steps) + 1e-12) << "row " << i << " id " << j;
      }
    }
  }
  // The same step draws the same labels, and a dp rank's rows draw what the whole batch
  // draws there.
  TermSpec s{"random_labels", "forget"};
  s.seed = 5;
  auto ids = [](const Tensor& t) { return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel()); };
  const Tensor all = draw_random_labels(s, ref, b);
  EXPECT_EQ(ids(all), ids(draw_random_labels(s, ref, b)));
  UnlearnBatch part;
  part.tokens = b.tokens.slice_rows(1, 3).clone();
  part.targets = b.targets.slice_rows(1, 3).clone();
  part.step = b.step;
  part.row0 = 1;
  part.global_rows = 3;
  EXPECT_EQ(ids(draw_random_labels(s, ref, part)), ids(all.slice_rows(1, 3).clone()));
  // Uniform labels reach every id, whatever the reference prefers.
  s.label_source = "uniform";
  std::vector<int> seen(size_t(V), 0);
  for (int st = 0; st < 100; ++st) {
    UnlearnBatch sb = b;
    sb.step = st;
    const Tensor y = draw_random_labels(s, ref, sb);
    for (int64_t i = 0; i < N; ++i)
      if (tgt[i] != ops::kIgnoreIndex) seen[size_t(y.data<int32_t>()[i])] = 1;
  }
  EXPECT_EQ(std::accumulate(seen.begin(), seen.end(), 0), int(V));
}

// Per token: at theta = theta_ref every sequence's log-ratio is 0, the weight 2 sigma(0) = 1,
// and NPO's gradient is the ascent of the mean over sequences of each one's mean NLL: for
// rows of equal length, exactly GA's (-1 x the nll term). Summed log-ratios gave |y| times it.
TEST(TermProperties, NpoIsPerTokenAndStartsAsGradientAscent) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64), m(c, DType::f64);
  ref.init_weights(5);
  m.init_weights(5);
  SmallStream stream(c);
  UnlearnBatch b;
  b.tokens = Tensor::empty({3, 6}, DType::i32);
  b.targets = Tensor::empty({3, 6}, DType::i32);
  b.seq_ids = {2, 5, 6};
  for (int r = 0; r < 3; ++r)
    stream.sampler->sequence(b.seq_ids[size_t(r)], b.tokens.data<int32_t>() + r * 6, b.targets.data<int32_t>() + r * 6);
  TermSpec n{"npo", "forget"};
  n.beta = 2.0;
  auto npo = make_term(n, &ref);
  npo->prepare(ref, *stream.sampler, 3);
  m.grads().zero();
  npo->accumulate(m, b, 1.0);
  const std::vector<double> g_npo = values(m.grads().flat());
  m.grads().zero();
  make_term({"nll", "forget"}, &ref)->accumulate(m, b, -1.0);
  const std::vector<double> g_ga = values(m.grads().flat());
  double err = 0, mag = 0;
  for (size_t i = 0; i < g_ga.size(); ++i) err = std::max(err, std::abs(g_npo[i] - g_ga[i])), mag = std::max(mag, std::abs(g_ga[i]));
  EXPECT_LT(err, 1e-12 * mag);
  // Away from the reference: -(2/beta) mean_s log sigma(-beta * mean_t (log p - log p_ref)).
  for (size_t i = 0; i < m.params().size(); ++i) {
    Tensor d = randn(m.params()[i].shape(), DType::f64, 70 + i, 0.05);
    for (int64_t k = 0; k < d.numel(); ++k) m.params()[i].data<double>()[k] += d.data<double>()[k];
  }
  m.forward(b.tokens, b.targets);
  const std::vector<double> lp = values(m.logprobs());
  ref.forward(b.tokens, b.targets);
  const std::vector<double> lr = values(ref.logprobs());
  double want = 0;
  for (int r = 0; r < 3; ++r) {
    double d = 0;
    for (int k = 0; k < 6; ++k) d += (lp[size_t(r * 6 + k)] - lr[size_t(r * 6 + k)]) / 6;
    want += -(2 / n.beta) * std::log(1 / (1 + std::exp(n.beta * d))) / 3;
  }
  EXPECT_NEAR(npo->value(m, b), want, 1e-10);
}

// Mean over real tokens of the model's softmax rows: -log p(target) per token.
std::vector<double> token_nll(LlamaModel& m, const UnlearnBatch& b) {
  const Tensor logits = m.forward_logits(b.tokens).clone();
  std::vector<double> out(size_t(logits.dim(0)), 0.0);
  for (int64_t i = 0; i < logits.dim(0); ++i) {
    const int32_t y = b.targets.data<int32_t>()[i];
    if (y != ops::kIgnoreIndex) out[size_t(i)] = -std::log(row_softmax(logits, i)[size_t(y)]);
  }
  return out;
}

TEST(TermProperties, WgaFloodAndUndialValues) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64), m(c, DType::f64);
  ref.init_weights(5);
  m.init_weights(6);
  const UnlearnBatch b = batch(c);
  const std::vector<double> nll = token_nll(m, b);
  const int32_t* t = b.targets.data<int32_t>();
  int n = 0;
  double mean_nll = 0, mean_1mp = 0;
  for (int i = 0; i < 18; ++i)
    if (t[i] != ops::kIgnoreIndex) ++n, mean_nll += nll[size_t(i)], mean_1mp += 1 - std::exp(-nll[size_t(i)]);
  // WGA: (1 - p^alpha) / alpha per token; alpha = 1 is 1 - p, alpha -> 0 the NLL.
  TermSpec w{"wga", "forget"};
  w.alpha = 1.0;
  EXPECT_NEAR(make_term(w, &ref)->value(m, b), mean_1mp / n, 1e-12);
  w.alpha = 1e-7;
  EXPECT_NEAR(make_term(w, &ref)->value(m, b), mean_nll / n, 1e-5);
  // Flood: the mean over sequences of max(0, F - NLL per token).
  TermSpec f{"flood", "forget"};
  f.flood = 2.9;
  double want = 0;
  for (int r = 0; r < 3; ++r) {
    double s = 0;
    int k = 0;
    for (int j = 0; j < 6; ++j)
      if (t[r * 6 + j] != ops::kIgnoreIndex) s += nll[size_t(r * 6 + j)], ++k;
    want += std::max(0.0, f.flood - s / k) / 3;
  }
  EXPECT_NEAR(make_term(f, &ref)->value(m, b), want, 1e-12);
  // UNDIAL at theta = theta_ref: KL from the reference with the true token's logit lowered
  // by gamma to the reference itself; a vanishing gamma leaves nothing to learn.
  TermSpec u{"undial", "forget"};
  u.gamma = 2.0;
  const Tensor lg = ref.forward_logits(b.tokens).clone();
  double kl = 0;
  for (int64_t i = 0; i < 18; ++i) {
    if (t[i] == ops::kIgnoreIndex) continue;
    const std::vector<double> p = row_softmax(lg, i);
    std::vector<double> q = p;
    q[size_t(t[i])] *= std::exp(-u.gamma);
    const double z = std::accumulate(q.begin(), q.end(), 0.0);
    for (size_t j = 0; j < q.size(); ++j) kl += q[j] / z * std::log(q[j] / z / p[j]) / n;
  }
  EXPECT_NEAR(make_term(u, &ref)->value(ref, b), kl, 1e-12);
  u.gamma = 1e-9;
  EXPECT_NEAR(make_term(u, &ref)->value(ref, b), 0.0, 1e-12);
}

// Adaptive RMU: c = beta * the mean L2 norm of the original's layer-l residual stream over
// the stream's real positions, measured in prepare().
TEST(TermProperties, AdaptiveRmuSteersWithBetaTimesTheMeanActivationNorm) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64), m(c, DType::f64);
  ref.init_weights(5);
  m.init_weights(6);
  SmallStream stream(c);
  double sum = 0;
  int n = 0;
  for (int64_t i = 0; i < stream.sampler->n_sequences(); ++i) {
    Tensor tok = Tensor::empty({1, 6}, DType::i32), tgt = Tensor::empty({1, 6}, DType::i32);
    stream.sampler->sequence(i, tok.data<int32_t>(), tgt.data<int32_t>());
    const Tensor h = ref.forward_hidden(tok, 1).clone();
    for (int k = 0; k < 6; ++k) {
      if (tgt.data<int32_t>()[k] == ops::kIgnoreIndex) continue;
      double q = 0;
      for (int64_t j = 0; j < c.dim; ++j) q += h.data<double>()[k * c.dim + j] * h.data<double>()[k * c.dim + j];
      sum += std::sqrt(q), ++n;
    }
  }
  TermSpec a{"rmu_forget", "forget"}, f{"rmu_forget", "forget"};
  a.layer = f.layer = 1;
  a.seed = f.seed = 4;
  a.steering = "adaptive";
  a.beta = 1.7;
  f.steer = a.beta * sum / n;
  auto adaptive = make_term(a, &ref);
  const UnlearnBatch b = batch(c);
  EXPECT_THROW(adaptive->value(m, b), Error);  // not measured yet
  adaptive->prepare(ref, *stream.sampler, 3);
  EXPECT_NEAR(adaptive->value(m, b), make_term(f, &ref)->value(m, b), 1e-10);
}

// A caller without a frozen copy hands the term the model it trains and prepares the term
// with it: the term reads the original weights afterwards, not the updated ones.
TEST(TermProperties, ATermHandedTheTrainedModelKeepsTheOriginal) {
  const LlamaConfig c = tiny();
  SmallStream stream(c);
  const UnlearnBatch b = batch(c);
  for (const char* type : {"undial", "random_labels"}) {
    SCOPED_TRACE(type);
    LlamaModel original(c, DType::f64), m(c, DType::f64);
    original.init_weights(5);
    m.init_weights(5);
    TermSpec s{type, "forget"};
    s.seed = 2;
    s.gamma = 1.0;
    auto shared = make_term(s, &original), own = make_term(s, &m);
    own->prepare(m, *stream.sampler, 3);
    for (size_t i = 0; i < m.params().size(); ++i) {
      Tensor d = randn(m.params()[i].shape(), DType::f64, 30 + i, 0.2);
      for (int64_t k = 0; k < d.numel(); ++k) m.params()[i].data<double>()[k] += d.data<double>()[k];
    }
    EXPECT_EQ(own->value(m, b), shared->value(m, b));
  }
}

TEST(TermProperties, BadSpecsAreErrors) {
  const LlamaConfig c = tiny();
  LlamaModel ref(c, DType::f64);
  EXPECT_THROW(make_term({"gradient_magic", "forget"}, &ref), Error);
  EXPECT_THROW(make_term({"nll", "holdout"}, &ref), Error);
  EXPECT_THROW(make_term({"kl", "retain"}, nullptr), Error);
  EXPECT_THROW(make_term({"undial", "forget"}, nullptr), Error);
  TermSpec r{"rmu_forget", "forget"};
  r.layer = 3;
  EXPECT_THROW(make_term(r, &ref), Error);
  TermSpec n{"npo", "forget"};
  n.beta = 0;
  EXPECT_THROW(make_term(n, &ref), Error);
  auto expect_error = [&](TermSpec s, const std::string& needle) {
    try {
      make_term(s, &ref);
      ADD_FAILURE() << "expected an error naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  TermSpec rl{"random_labels", "forget"};
  for (double p : {0.0, -0.1, 1.5}) {
    rl.top_p = p;
    expect_error(rl, "top_p");
  }
  rl.top_p = 1;
  rl.top_k = -1;
  expect_error(rl, "top_k");
  rl.top_k = c.vocab_size + 1;
  expect_error(rl, "top_k");
  rl.top_k = 0;
  rl.label_source = "model";
  expect_error(rl, "label_source");
  TermSpec w{"wga", "forget"};
  w.alpha = 0;
  expect_error(w, "alpha");
  TermSpec u{"undial", "forget"};
  u.gamma = -1;
  expect_error(u, "gamma");
  expect_error({"flood", "forget"}, "flood");  // no target level
  TermSpec st{"rmu_forget", "forget"};
  st.layer = 1;
  st.steering = "auto";
  expect_error(st, "steering");
  st.steering = "adaptive";
  st.beta = 0;
  expect_error(st, "beta");
}

}  // namespace
}  // namespace lethe
