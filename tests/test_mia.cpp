// Membership-inference scores and metrics: hand-computed answers for every formula, a
// brute-force check of the AUC, and the per-token statistics of a real (tiny, random)
// model against a direct forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/core/rng.h"
#include "engine/eval/mia.h"
#include "engine/eval/mia_stats.h"
#include "engine/parallel/vocab_parallel.h"
#include "kernels/cross_entropy.h"
#include "kernels/host_staged_device.h"
#include "tests/test_util.h"

namespace lethe {
namespace {

// ---- ROC AUC -------------------------------------------------------------------------

TEST(MiaAuc, HandComputedCases) {
  EXPECT_EQ(roc_auc({3, 4, 5}, {0, 1, 2}), 1.0);
  EXPECT_EQ(roc_auc({0, 1, 2}, {3, 4, 5}), 0.0);
  // Same multiset on both sides: pairs above and below balance, ties count 1/2.
  EXPECT_EQ(roc_auc({1, 1, 2, 2}, {2, 1, 2, 1}), 0.5);
  EXPECT_EQ(roc_auc({7, 7}, {7, 7, 7}), 0.5);
  // 0.9 and 0.8 beat all three; 0.4 loses to 0.7, ties 0.4, beats 0.1: 7.5 / 9.
  EXPECT_NEAR(roc_auc({0.9, 0.8, 0.4}, {0.7, 0.4, 0.1}), 7.5 / 9.0, 1e-15);
  // One member against one nonmember: win, tie, loss.
  EXPECT_EQ(roc_auc({2}, {1}), 1.0);
  EXPECT_EQ(roc_auc({1}, {1}), 0.5);
  EXPECT_EQ(roc_auc({-INFINITY}, {1}), 0.0);
}

TEST(MiaAuc, MatchesBruteForcePairCount) {
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const Philox rng(seed, 7);
    // Scores rounded to a coarse grid, so ties are frequent.
    std::vector<double> pos(137), neg(211);
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = std::round(4 * (rng.normal(i) + 0.3)) / 4;
    for (size_t i = 0; i < neg.size(); ++i) neg[i] = std::round(4 * rng.normal(1000 + i)) / 4;
    double wins = 0;
    for (double p : pos)
      for (double n : neg) wins += p > n ? 1.0 : p == n ? 0.5 : 0.0;
    const double brute = wins / double(pos.size() * neg.size());
    EXPECT_NEAR(roc_auc(pos, neg), brute, 1e-12) << "seed " << seed;
    EXPECT_NEAR(roc_auc(neg, pos), 1.0 - brute, 1e-12) << "seed " << seed;
  }
}

TEST(MiaAuc, RejectsEmptyAndNaN) {
  EXPECT_THROW(roc_auc({}, {1.0}), Error);
  EXPECT_THROW(roc_auc({1.0}, {}), Error);
  EXPECT_THROW(roc_auc({1.0, NAN}, {0.0}), Error);
}

// ---- TPR at a fixed FPR --------------------------------------------------------------

std::vector<double> range_scores(int lo, int hi) {
  std::vector<double> v;
  for (int i = lo; i <= hi; ++i) v.push_back(i);
  return v;
}

TEST(MiaTpr, HandComputedCases) {
  const std::vector<double> members{25, 20, 19.5, 19, 3};
  const std::vector<double> nonmembers = range_scores(1, 20);  // 20 scores
  // 5% of 20 allows one false positive: tau just above 19 admits nonmember 20 only.
  EXPECT_EQ(tpr_at_fpr(members, nonmembers, 0.05), 3.0 / 5.0);
  // 10%: two false positives, tau above 18.
  EXPECT_EQ(tpr_at_fpr(members, nonmembers, 0.10), 4.0 / 5.0);
  // None allowed: tau above every nonmember.
  EXPECT_EQ(tpr_at_fpr(members, nonmembers, 0.0), 1.0 / 5.0);
  EXPECT_EQ(tpr_at_fpr(members, nonmembers, 1.0), 1.0);
  // 4.9% of 20 is under one nonmember: same as 0.
  EXPECT_EQ(tpr_at_fpr(members, nonmembers, 0.049), 1.0 / 5.0);
}

TEST(MiaTpr, TiesAreConservative) {
  // Two nonmembers tie at 20: no threshold admits just one of them, so 5% allows neither.
  std::vector<double> nonmembers = range_scores(1, 18);
  nonmembers.push_back(20);
  nonmembers.push_back(20);
  EXPECT_EQ(tpr_at_fpr({25, 20, 19.5, 19, 3}, nonmembers, 0.05), 1.0 / 5.0);
  // Members tied with the excluded run are not counted either.
  EXPECT_EQ(tpr_at_fpr({20, 20}, {20, 20, 20, 20}, 0.5), 0.0);
  EXPECT_EQ(tpr_at_fpr({20, 20}, {20, 20, 20, 20}, 1.0), 1.0);
}

TEST(MiaTpr, FprBoundaryIsTheOneWritten) {
  // 0.29 * 100 = 28.999... in double, but 29 false positives of 100 is an FPR of 0.29:
  // tau lies above the 30th highest nonmember (70).
  EXPECT_EQ(tpr_at_fpr({70, 70.5, 71}, range_scores(0, 99), 0.29), 2.0 / 3.0);
  EXPECT_THROW(tpr_at_fpr({1}, {0}, -0.1), Error);
  EXPECT_THROW(tpr_at_fpr({1}, {0}, 1.5), Error);
  EXPECT_THROW(tpr_at_fpr({}, {0}, 0.05), Error);
}

// ---- PrivLeak ------------------------------------------------------------------------

TEST(MiaPrivLeak, Arithmetic) {
  EXPECT_NEAR(priv_leak(0.6, 0.5), 20.0, 1e-12);
  EXPECT_NEAR(priv_leak(0.45, 0.5), -10.0, 1e-12);
  EXPECT_NEAR(priv_leak(0.75, 0.75), 0.0, 1e-12);
  EXPECT_NEAR(priv_leak(1.0, 0.4), 150.0, 1e-12);
  EXPECT_THROW(priv_leak(0.5, 0.0), Error);
  EXPECT_THROW(priv_leak(1.2, 0.5), Error);
}

// ---- per-document scores -------------------------------------------------------------

const std::string kFox = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.";

TEST(MiaScores, ZlibSizeMatchesPython) {
  // len(zlib.compress(b)) from Python 3 with the system zlib.
  EXPECT_EQ(zlib_size(""), 8);
  EXPECT_EQ(zlib_size("abc"), 11);
  EXPECT_EQ(zlib_size(kFox), 55);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  EXPECT_EQ(zlib_size(all), 267);
  // Long enough that the level shows: 3162 bytes at level 1, 2528 at 5, 2424 at 7, 2421 at 9.
  const char* words[] = {"the", "fox", "lazy", "dog", "jumps", "over", "quick", "brown", "and", "a", "cat"};
  std::string text;
  uint64_t x = 1;
  for (int i = 0; i < 3000; ++i) {
    x = (x * 1103515245 + 12345) % (1ull << 31);
    if (i) text += ' ';
    text += words[(x >> 16) % 11];
  }
  ASSERT_EQ(text.size(), 13572u);
  EXPECT_EQ(zlib_size(text), 2440);
}

TEST(MiaScores, MeanLowest) {
  // k% of n rounds down, but at least one value is taken.
  EXPECT_EQ(mean_lowest({-1, -2, -3}, 10), -3.0);
  EXPECT_EQ(mean_lowest({-1, -2, -3}, 60), -3.0);  // floor(1.8) = 1
  EXPECT_EQ(mean_lowest({-1, -2, -3}, 100), -2.0);
  EXPECT_EQ(mean_lowest({5, 1, 4, 2, 3}, 40), 1.5);  // floor(2.0) = 2
  EXPECT_THROW(mean_lowest({}, 10), Error);
  EXPECT_THROW(mean_lowest({1}, 0), Error);
  EXPECT_THROW(mean_lowest({1}, 101), Error);
}

DocTokenStats doc_stats(std::vector<float> logp, std::vector<float> mu, std::vector<float> sigma, int64_t doc) {
  DocTokenStats s;
  s.logp = std::move(logp);
  s.mu = std::move(mu);
  s.sigma = std::move(sigma);
  s.doc = doc;
  return s;
}

TEST(MiaScores, LossZlibMinK) {
  // logp -1 .. -10, out of order; mu/sigma make z = logp + 5.
  const std::vector<float> lp{-3, -10, -1, -7, -5, -2, -9, -4, -8, -6};
  const DocTokenStats s = doc_stats(lp, std::vector<float>(10, -5.f), std::vector<float>(10, 1.f), 4);
  const MiaScores r = mia_scores({s}, {kFox});
  const auto& a = r.by_attack;
  EXPECT_EQ(a.size(), 2u + 2u * kMiaKPercents.size());
  EXPECT_EQ(a.count("reference"), 0u);
  EXPECT_NEAR(a.at("loss")[0], -5.5, 1e-12);
  EXPECT_NEAR(a.at("zlib")[0], -5.5 / 55.0, 1e-12);
  const std::map<int, double> min_k{{10, -10}, {20, -9.5}, {30, -9},   {40, -8.5},
                                    {50, -8},  {60, -7.5}, {100, -5.5}};
  for (const auto& [k, want] : min_k) {
    EXPECT_NEAR(a.at("min_k_" + std::to_string(k))[0], want, 1e-12) << k;
    EXPECT_NEAR(a.at("min_k_pp_" + std::to_string(k))[0], want + 5, 1e-12) << k;
  }
}

TEST(MiaScores, MinKPlusPlusNormalisesAndGuardsSigma) {
  // z = (logp - mu) / sigma = {1, 0, -2, 0, 0}: without the guard the fourth token
  // (sigma 0) would give -inf and the fifth (sigma 1e-13) -4e13.
  const DocTokenStats s =
      doc_stats({-1, -2, -3, -4, -6}, {-2, -2, -2, -2, -2}, {1, 2, 0.5f, 0, 1e-13f}, 0);
  const auto a = mia_scores({s}, {"x"}).by_attack;
  // Sorted z: {-2, 0, 0, 0, 1}.
  EXPECT_NEAR(a.at("min_k_pp_10")[0], -2.0, 1e-12);   // 1 value
  EXPECT_NEAR(a.at("min_k_pp_40")[0], -1.0, 1e-12);   // 2 values
  EXPECT_NEAR(a.at("min_k_pp_60")[0], -2.0 / 3, 1e-12);  // 3 values
  EXPECT_NEAR(a.at("min_k_pp_100")[0], -1.0 / 5, 1e-12);
  EXPECT_NEAR(a.at("min_k_100")[0], -16.0 / 5, 1e-6);
}

TEST(MiaScores, ReferenceIsTheMeanLogLikelihoodDifference) {
  const DocTokenStats t0 = doc_stats({-1, -2, -3}, {0, 0, 0}, {1, 1, 1}, 0);
  const DocTokenStats t1 = doc_stats({-4}, {0}, {1}, 2);
  const DocTokenStats r0 = doc_stats({-3, -4}, {0, 0}, {1, 1}, 0);  // another tokenizer: 2 tokens
  const DocTokenStats r1 = doc_stats({-1}, {0}, {1}, 2);
  const std::vector<DocTokenStats> ref{r0, r1};
  const auto a = mia_scores({t0, t1}, {"ab", "cd"}, &ref).by_attack;
  ASSERT_EQ(a.at("reference").size(), 2u);
  EXPECT_NEAR(a.at("reference")[0], -2.0 - -3.5, 1e-12);
  EXPECT_NEAR(a.at("reference")[1], -4.0 - -1.0, 1e-12);

  const std::vector<DocTokenStats> swapped{r1, r0};
  EXPECT_THROW(mia_scores({t0, t1}, {"ab", "cd"}, &swapped), Error);
  const std::vector<DocTokenStats> short_ref{r0};
  EXPECT_THROW(mia_scores({t0, t1}, {"ab", "cd"}, &short_ref), Error);
}

TEST(MiaScores, RejectsBadInput) {
  const DocTokenStats ok = doc_stats({-1}, {0}, {1}, 0);
  EXPECT_THROW(mia_scores({}, {}), Error);
  EXPECT_EQ(mia_scores({ok}, {}).by_attack.count("zlib"), 0u) << "no text: no zlib attack, not an error";
  EXPECT_THROW(mia_scores({ok, ok}, {"a"}), Error);
  EXPECT_THROW(mia_scores({ok}, {"a", "b"}), Error);
  EXPECT_THROW(mia_scores({doc_stats({}, {}, {}, 1)}, {"a"}), Error);
  EXPECT_THROW(mia_scores({doc_stats({-1, -2}, {0}, {1, 1}, 1)}, {"a"}), Error);
}

TEST(MiaReport, AucAndTprPerAttack) {
  MiaScores m, n;
  m.by_attack["loss"] = {0.9, 0.8, 0.4};
  n.by_attack["loss"] = {0.7, 0.4, 0.1};
  m.by_attack["zlib"] = {0, 1, 2};
  n.by_attack["zlib"] = {3, 4, 5};
  const MiaReport r = mia_report(m, n);
  EXPECT_NEAR(r.auc.at("loss"), 7.5 / 9.0, 1e-15);
  EXPECT_EQ(r.auc.at("zlib"), 0.0);
  // 5% of 3 nonmembers allows none: tau above 0.7.
  EXPECT_EQ(r.tpr_at_5_fpr.at("loss"), 2.0 / 3.0);
  EXPECT_EQ(r.tpr_at_5_fpr.at("zlib"), 0.0);

  MiaScores extra = n;
  extra.by_attack["reference"] = {1, 2, 3};
  EXPECT_THROW(mia_report(m, extra), Error);
  EXPECT_THROW(mia_report(extra, m), Error);
  EXPECT_THROW(mia_report(MiaScores{}, n), Error);
}

// ---- token statistics from logits and from the model ---------------------------------

TEST(MiaStats, LogitMomentsByHand) {
  // p = {1/6, 2/6, 3/6}: mu = sum p ln p, sigma^2 = sum p (ln p)^2 - mu^2 (Python, float64).
  const double row[3] = {0, std::log(2.0), std::log(3.0)};
  double mu = 0, sigma = 0;
  logit_moments(row, 3, mu, sigma);
  EXPECT_NEAR(mu, -1.0114042647073518, 1e-14);
  EXPECT_NEAR(sigma, 0.39328264622678494, 1e-14);
  // Softmax ignores a common shift; f32 rows agree to f32 precision.
  const float shifted[3] = {100.f, 100.f + float(std::log(2.0)), 100.f + float(std::log(3.0))};
  logit_moments(shifted, 3, mu, sigma);
  EXPECT_NEAR(mu, -1.0114042647073518, 1e-5);
  EXPECT_NEAR(sigma, 0.39328264622678494, 1e-5);
  // Uniform: every token is exactly as likely as the mean.
  const float uniform[4] = {2.5f, 2.5f, 2.5f, 2.5f};
  logit_moments(uniform, 4, mu, sigma);
  EXPECT_NEAR(mu, -std::log(4.0), 1e-14);
  EXPECT_LT(sigma, 1e-12);
}

// The moments of a chunk of logits (vocab_parallel_logprob_moments, which the MIA suite
// runs on each chunk where it lives) are logit_moments' arithmetic for one rank, bit for
// bit, in f32 and f64; on the host-staged device the bf16 chunk's moments equal those of
// its f32 widening (the emulation's logits), bit for bit.
TEST(MiaStats, ChunkMomentsAreLogitMomentsBitForBit) {
  auto one = make_local_communicator();
  const int64_t R = 7, V = 300;
  auto check = [&](const Tensor& logits, const Tensor& rows) {
    Tensor mu = Tensor::empty({R}, DType::f64), sigma = Tensor::empty({R}, DType::f64);
    vocab_parallel_logprob_moments(logits, mu, sigma, *one);
    for (int64_t i = 0; i < R; ++i) {
      double m = 0, sd = 0;
      if (rows.dtype() == DType::f32) logit_moments(rows.data<float>() + i * V, V, m, sd);
      else logit_moments(rows.data<double>() + i * V, V, m, sd);
      EXPECT_EQ(mu.data<double>()[i], m) << logits.describe() << " row " << i;
      EXPECT_EQ(sigma.data<double>()[i], sd) << logits.describe() << " row " << i;
    }
  };
  const Tensor f32 = test::randn({R, V}, DType::f32, 11, 3.0), f64 = test::randn({R, V}, DType::f64, 12, 3.0);
  check(f32, f32);
  check(f64, f64);
  ScopedHostStagedDevice device;
  const Tensor bf16 = f32.to(DType::bf16).to(Device::cuda);
  check(bf16, bf16.to(Device::cpu).to(DType::f32));
}

LlamaConfig tiny_byte_model() {
  LlamaConfig c;
  c.name = "tiny-bytes";
  c.vocab_size = 256;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 32;
  c.max_seq_len = 16;
  c.init_std = 0.5;  // peaked, uneven distributions: mu and sigma vary per token
  return c;
}

// Three documents: 13 bytes, 1 byte (nothing to predict), 6 bytes.
TokenDataset three_docs() {
  TokenDataset ds;
  ds.path = "in-memory";
  ds.tokenizer = "bytes";
  ds.vocab_size = 256;
  const std::vector<std::string> docs{"hello, world!", "x", "forget"};
  ds.offsets.push_back(0);
  for (const std::string& d : docs) {
    for (char ch : d) ds.tokens.push_back(int32_t(uint8_t(ch)));
    ds.offsets.push_back(int64_t(ds.tokens.size()));
  }
  ds.doc_sha256.resize(docs.size());
  return ds;
}

struct DirectStats {
  std::vector<double> logp, mu, sigma;
};

// The reference: one forward per chunk (B = 1), moments in the textbook one-pass form.
DirectStats direct(LlamaModel& m, const TokenDataset& ds, int64_t doc, int64_t T) {
  DirectStats r;
  const int64_t a = ds.offsets[size_t(doc)], n = ds.doc_length(doc), V = m.config().vocab_size;
  for (int64_t s = 0; s + 1 < n; s += T) {
    const int64_t len = std::min(T, n - 1 - s);
    Tensor tok = Tensor::empty({1, T}, DType::i32), tgt = Tensor::empty({1, T}, DType::i32);
    for (int64_t t = 0; t < T; ++t) {
      tok.data<int32_t>()[t] = t < len ? ds.tokens[size_t(a + s + t)] : 0;
      tgt.data<int32_t>()[t] = t < len ? ds.tokens[size_t(a + s + t + 1)] : ops::kIgnoreIndex;
    }
    m.set_keep_logits(true);
    m.forward(tok, tgt);
    const std::vector<double> lp = test::values(m.logprobs()), lg = test::values(m.logits());
    for (int64_t t = 0; t < len; ++t) {
      r.logp.push_back(lp[size_t(t)]);
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(lg[size_t(t * V + v)]);
      double e1 = 0, e2 = 0;
      for (int64_t v = 0; v < V; ++v) {
        const double l = lg[size_t(t * V + v)] - std::log(z), p = std::exp(l);
        e1 += p * l;
        e2 += p * l * l;
      }
      r.mu.push_back(e1);
      r.sigma.push_back(std::sqrt(e2 - e1 * e1));
    }
  }
  return r;
}

class MiaCollect : public ::testing::TestWithParam<DType> {};

TEST_P(MiaCollect, MatchesDirectForwardPerChunk) {
  LlamaModel m(tiny_byte_model(), GetParam());
  m.init_weights(17);
  const TokenDataset ds = three_docs();
  const int64_t T = 5;
  // Batches of 2 chunks mix documents: doc 0 has chunks of 5, 5, 2 targets, doc 2 one of 5.
  int64_t skipped = -1;
  const std::vector<DocTokenStats> st = collect_doc_stats(m, ds, T, 2, 0, &skipped);
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(skipped, 1);
  EXPECT_EQ(st[0].doc, 0);
  EXPECT_EQ(st[1].doc, 2);
  for (const DocTokenStats& s : st) {
    const DirectStats d = direct(m, ds, s.doc, T);
    ASSERT_EQ(s.logp.size(), size_t(ds.doc_length(s.doc) - 1));
    ASSERT_EQ(d.logp.size(), s.logp.size());
    ASSERT_EQ(s.mu.size(), s.logp.size());
    ASSERT_EQ(s.sigma.size(), s.logp.size());
    double sigma_min = 1e30, sigma_max = 0;
    for (size_t t = 0; t < s.logp.size(); ++t) {
      EXPECT_NEAR(s.logp[t], d.logp[t], 1e-5) << "doc " << s.doc << " token " << t;
      EXPECT_NEAR(s.mu[t], d.mu[t], 1e-5) << "doc " << s.doc << " token " << t;
      EXPECT_NEAR(s.sigma[t], d.sigma[t], 1e-5) << "doc " << s.doc << " token " << t;
      sigma_min = std::min(sigma_min, double(s.sigma[t]));
      sigma_max = std::max(sigma_max, double(s.sigma[t]));
    }
    // The model is far from uniform, so the comparison above is not of near-zeros.
    EXPECT_GT(sigma_max - sigma_min, 1e-2);
  }

  // Only the first document, then the first two (of which one has nothing to predict).
  EXPECT_EQ(collect_doc_stats(m, ds, T, 3, 1, &skipped).size(), 1u);
  EXPECT_EQ(skipped, 0);
  const auto two = collect_doc_stats(m, ds, T, 3, 2, &skipped);
  ASSERT_EQ(two.size(), 1u);
  EXPECT_EQ(skipped, 1);
  ASSERT_EQ(two[0].logp.size(), st[0].logp.size());
  for (size_t t = 0; t < st[0].logp.size(); ++t)  // batches of 3 chunks instead of 2
    EXPECT_NEAR(two[0].logp[t], st[0].logp[t], 1e-6) << "token " << t;

  // End to end: the same documents on both sides cannot be told apart, and a model is its
  // own reference.
  const std::vector<std::string> text = bytes_of_docs(ds, st);
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(text[0], "hello, world!");
  EXPECT_EQ(text[1], "forget");
  const MiaScores sc = mia_scores(st, text, &st);
  for (double v : sc.by_attack.at("reference")) EXPECT_EQ(v, 0.0);
  const MiaReport rep = mia_report(sc, sc);
  EXPECT_EQ(rep.auc.size(), 3u + 2u * kMiaKPercents.size());
  for (const auto& [name, auc] : rep.auc) EXPECT_EQ(auc, 0.5) << name;

  // First chunk of each document only: doc 0 keeps its first 5 targets, doc 2 its 5.
  const auto first = collect_doc_stats(m, ds, T, 2, 0, &skipped, 1);
  ASSERT_EQ(first.size(), 2u);
  ASSERT_EQ(first[0].logp.size(), 5u);
  ASSERT_EQ(first[1].logp.size(), 5u);
  for (size_t t = 0; t < 5; ++t) EXPECT_NEAR(first[0].logp[t], st[0].logp[t], 1e-6) << "token " << t;
  EXPECT_EQ(collect_doc_stats(m, ds, T, 2, 0, &skipped, 2)[0].logp.size(), 10u);
  // Without the text, the zlib attack is left out and the rest are unchanged.
  const MiaScores no_text = mia_scores(st, {}, &st);
  EXPECT_EQ(no_text.by_attack.count("zlib"), 0u);
  EXPECT_EQ(no_text.by_attack.at("loss"), sc.by_attack.at("loss"));
  EXPECT_EQ(no_text.by_attack.size() + 1, sc.by_attack.size());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MiaCollect, ::testing::Values(DType::f32, DType::f64),
                         [](const auto& info) { return info.param == DType::f32 ? "f32" : "f64"; });

TEST(MiaBytes, OfByteLevelDocuments) {
  TokenDataset ds = three_docs();
  EXPECT_EQ(bytes_of_doc(ds, 1), "x");
  EXPECT_THROW(bytes_of_doc(ds, 3), Error);
  // bos/eos added around a document are not part of its text.
  ds.bos_id = 'h';
  ds.eos_id = '!';
  EXPECT_EQ(bytes_of_doc(ds, 0), "ello, world");
  EXPECT_EQ(bytes_of_doc(ds, 2), "forget");
  ds.tokenizer = "hf:smollm2";
  EXPECT_THROW(bytes_of_doc(ds, 0), Error);
}


// ---- intervals and PrivLeak conventions (engine/eval/mia_stats.h) ----------------------

MiaScores one_attack(std::vector<double> v) {
  MiaScores s;
  s.by_attack["loss"] = v;
  s.by_attack["min_k_40"] = std::move(v);
  return s;
}

TEST(MiaStats, BootstrapIntervalHasTheWidthTheAucsStandardErrorPredicts) {
  // 27 members and 27 non-members whose scores interleave: AUC 351/729 = 0.48. Hanley and
  // McNeil's standard error at AUC 0.5 is sqrt((n1 + n2 + 1) / (12 n1 n2)) = 0.0793, so a
  // 95% interval spans about 2 * 1.96 * 0.0793 = 0.311. The percentile interval of 1000
  // resamples estimates it to within Monte Carlo error (~5%) and the bootstrap's
  // small-sample bias (~10% at n = 27): accepted within 30%.
  std::vector<double> m, n;
  for (int i = 0; i < 27; ++i) m.push_back(2 * i), n.push_back(2 * i + 1);
  const auto st = summarize_attacks(one_attack(m), one_attack(n), 7);
  const Interval a = st.at("loss").auc;
  EXPECT_DOUBLE_EQ(a.value, 27.0 * 26 / 2 / 729);  // member 2i beats non-member 2j+1 when i > j
  EXPECT_LE(a.lo, a.value);
  EXPECT_GE(a.hi, a.value);
  const double predicted = 2 * 1.96 * std::sqrt(55.0 / (12.0 * 729.0));
  EXPECT_NEAR(a.hi - a.lo, predicted, 0.3 * predicted) << a.lo << " " << a.hi;
  // Deterministic for a seed, different for another.
  const Interval again = summarize_attacks(one_attack(m), one_attack(n), 7).at("loss").auc;
  EXPECT_EQ(again.lo, a.lo);
  EXPECT_EQ(again.hi, a.hi);
  EXPECT_NE(summarize_attacks(one_attack(m), one_attack(n), 8).at("loss").auc.lo, a.lo);
}

TEST(MiaStats, SeparatedScoresGiveAPointIntervalAndFullTprAtLowFpr) {
  std::vector<double> m, n;
  for (int i = 0; i < 100; ++i) m.push_back(100 + i), n.push_back(i);
  const AttackSummary s = summarize_attacks(one_attack(m), one_attack(n), 1).at("loss");
  EXPECT_EQ(s.auc.value, 1.0);
  EXPECT_EQ(s.auc.lo, 1.0);
  EXPECT_EQ(s.auc.hi, 1.0);
  EXPECT_EQ(s.tpr_at_1_fpr, 1.0);
  EXPECT_EQ(s.tpr_at_5_fpr, 1.0);
}

TEST(MiaStats, PrivLeakConventionsAreNamedAndDiffer) {
  // MUSE's convention on 1 - AUC: an original model at AUC 0.83 against an oracle at 0.45
  // reads +84.4% as relative AUC and -69.1% in MUSE's convention.
  EXPECT_NEAR(priv_leak(PrivLeak::relative_auc, 0.83, 0.45), (0.83 - 0.45) / 0.45 * 100, 1e-12);
  EXPECT_NEAR(priv_leak(PrivLeak::muse, 0.83, 0.45), (0.17 - 0.55) / 0.55 * 100, 1e-12);
  EXPECT_TRUE(std::isnan(priv_leak(PrivLeak::muse, 0.9, 1.0)));
  EXPECT_TRUE(std::isnan(priv_leak(PrivLeak::relative_auc, 0.9, 0.0)));
  EXPECT_STREQ(priv_leak_attack(PrivLeak::muse), "min_k_40");
  EXPECT_STREQ(priv_leak_attack(PrivLeak::relative_auc), "loss");
}

TEST(MiaStats, PrivLeakIntervalIsPairedOverDocuments) {
  // A model scoring every document exactly as the oracle does has PrivLeak 0 on every
  // resample when the resamples are paired; an unpaired bootstrap would give a wide interval.
  const Philox rng(5, 0);
  std::vector<double> m, n;
  for (int i = 0; i < 30; ++i) m.push_back(rng.uniform(uint64_t(i)) + 0.2), n.push_back(rng.uniform(uint64_t(100 + i)));
  const MiaScores M = one_attack(m), N = one_attack(n);
  for (PrivLeak c : {PrivLeak::muse, PrivLeak::relative_auc}) {
    const Interval i = priv_leak_interval(c, M, N, M, N, 3);
    EXPECT_EQ(i.value, 0.0);
    EXPECT_EQ(i.lo, 0.0);
    EXPECT_EQ(i.hi, 0.0);
  }
  // A model that remembers (members shifted up) leaks: relative AUC > 0, MUSE's < 0, and
  // the interval excludes 0.
  std::vector<double> m2 = m;
  for (double& v : m2) v += 0.6;
  const Interval rel = priv_leak_interval(PrivLeak::relative_auc, one_attack(m2), N, M, N, 3);
  EXPECT_GT(rel.lo, 0.0);
  const Interval muse = priv_leak_interval(PrivLeak::muse, one_attack(m2), N, M, N, 3);
  EXPECT_LT(muse.hi, 0.0);
  // Different documents for the two models cannot be paired.
  EXPECT_THROW(priv_leak_interval(PrivLeak::muse, one_attack({1, 2}), N, M, N, 3), Error);
}

}  // namespace
}  // namespace lethe
