// Canary exposure: the exact walk against scoring every candidate of a small space, the
// sampled estimate against the exact rank, ties, and malformed canary files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/eval/exposure.h"
#include "engine/io/model_config_yaml.h"
#include "kernels/cross_entropy.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

std::string tmp(const std::string& name) {
  return (fs::temp_directory_path() / ("lethe_exposure_" + std::to_string(::getpid()) + "_" + name)).string();
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path, std::ios::binary);
  for (const auto& l : lines) out << l << "\n";
}

// Large weights, so that candidates' scores are far apart compared with f32 rounding.
LlamaModel tiny_model(uint64_t seed) {
  LlamaConfig c = load_llama_config(std::string(LETHE_SOURCE_DIR) + "/configs/models/tiny.yaml");
  c.init_std = 0.3;
  LlamaModel m(c);
  m.init_weights(seed);
  return m;
}

// Every candidate of the space, each scored in one unbatched forward: the reference rank.
struct Brute {
  double rank = 1, closest = 1e300;  // closest: smallest |lp - lp_secret| over the others
};
Brute brute_rank(LlamaModel& m, const Canary& c) {
  const int64_t L = int64_t(c.secret.size()), A = int64_t(c.alphabet.size());
  auto score = [&](const std::string& cand) {
    const std::vector<int32_t> whole = bytes_encode(c.prefix + cand);
    const int64_t T = int64_t(whole.size()) - 1;
    Tensor tok = Tensor::empty({1, T}, DType::i32), tgt = Tensor::empty({1, T}, DType::i32);
    for (int64_t t = 0; t < T; ++t) {
      tok.data<int32_t>()[t] = whole[size_t(t)];
      tgt.data<int32_t>()[t] = t >= T - L ? whole[size_t(t + 1)] : ops::kIgnoreIndex;
    }
    m.forward(tok, tgt);
    double s = 0;
    for (int64_t t = T - L; t < T; ++t) s += double(m.logprobs().data<float>()[t]);
    return s;
  };
  const double lp_s = score(c.secret);
  Brute b;
  int64_t n = 1;
  for (int64_t k = 0; k < L; ++k) n *= A;
  for (int64_t i = 0; i < n; ++i) {
    std::string cand;
    for (int64_t k = 0, v = i; k < L; ++k, v /= A) cand += c.alphabet[size_t(v % A)];
    if (cand == c.secret) continue;
    const double lp = score(cand);
    b.rank += lp > lp_s;
    b.closest = std::min(b.closest, std::abs(lp - lp_s));
  }
  return b;
}

TEST(Exposure, ExactRankMatchesScoringEveryCandidate) {
  LlamaModel m = tiny_model(31);
  int checked = 0;
  for (const char* secret : {"abca", "ccca", "baab", "acbc", "bbbb", "cabb"}) {
    const Canary c{"The code of Ada Lovelace is ", secret, "abc", 1};  // 81 candidates
    const Brute b = brute_rank(m, c);
    // The walk sums per-position f32 log-probabilities where the reference sums one row's:
    // they differ by about 1e-6, so a candidate closer than 1e-4 could fall either way.
    if (b.closest < 1e-4) continue;
    ++checked;
    for (const bool rows : {false, true}) {  // through the key/value cache, and row by row
      const ExposureResult e = canary_exposure(m, c, bytes_encode, 7, kExposureMaxRows, kExposureSamples, rows);
      SCOPED_TRACE(testing::Message() << secret << (rows ? " rows" : " cache"));
      EXPECT_TRUE(e.exact);
      EXPECT_EQ(e.rank, b.rank);
      EXPECT_NEAR(e.log2_space, 4 * std::log2(3.0), 1e-12);
      EXPECT_NEAR(e.exposure, e.log2_space - std::log2(b.rank), 1e-12);
    }
  }
  EXPECT_GE(checked, 4);
}

TEST(Exposure, SampledRankEstimatesTheExactOne) {
  LlamaModel m = tiny_model(32);
  const Canary c{"Locker code: ", "2013", "0123", 1};  // 256 candidates
  const ExposureResult exact = canary_exposure(m, c, bytes_encode, 7);
  ASSERT_TRUE(exact.exact);
  // A budget of one row forces sampling: rank - 1 = 255 (k + 1/2) / 2001 with k ~ Binomial(2000, p),
  // p = (rank_exact - 1) / 255. Its sd is at most 255 sqrt(2000 / 4) / 2001 = 2.85 ranks; 5 sd
  // and the 1/2's bias bound the difference.
  const double p = (exact.rank - 1) / 255.0;
  const double sd = 255.0 * std::sqrt(2000.0 * p * (1 - p)) / 2001.0;
  for (const bool rows : {false, true}) {
    const ExposureResult est = canary_exposure(m, c, bytes_encode, 7, 1, 2000, rows);
    EXPECT_FALSE(est.exact);
    EXPECT_NEAR(est.rank, exact.rank, 5 * sd + 0.2) << "exact " << exact.rank << (rows ? " rows" : " cache");
  }
}

TEST(Exposure, AModelThatCannotTellCandidatesApartRanksTheSecretInTheMiddle) {
  LlamaModel m = tiny_model(33);
  Tensor& head = m.params().get("lm_head.weight");
  std::fill(head.data<float>(), head.data<float>() + head.numel(), 0.0f);  // every token equally likely
  const Canary c{"pin ", "101", "01", 1};  // 8 candidates, all tied: rank 1 + 7/2
  const ExposureResult e = canary_exposure(m, c, bytes_encode, 7);
  EXPECT_TRUE(e.exact);
  EXPECT_DOUBLE_EQ(e.rank, 4.5);
  EXPECT_NEAR(e.exposure, 3 - std::log2(4.5), 1e-12);
}

TEST(Exposure, SetAndMalformedFiles) {
  LlamaModel m = tiny_model(34);
  const std::string path = tmp("set.jsonl");
  write_lines(path, {R"({"prefix": "code ", "secret": "12", "alphabet": "0123"})", "",
                     R"({"prefix": "other ", "secret": "ab", "alphabet": "abc", "entity": "x"})"});
  const ExposureSetResult s = canary_set_exposure(m, path, bytes_encode, 1);
  ASSERT_EQ(s.exposures.size(), 2u);
  EXPECT_NEAR(s.mean, (s.exposures[0] + s.exposures[1]) / 2, 1e-12);
  EXPECT_DOUBLE_EQ(s.log2_space_max, 4.0);
  EXPECT_EQ(s.exact, 2);

  const std::string good = R"({"prefix": "p", "secret": "01", "alphabet": "01"})";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"prefix": "p", "secret": "01")", "not valid JSON"},
      {R"(["p"])", "JSON object"},
      {R"({"secret": "01", "alphabet": "01"})", "missing \"prefix\""},
      {R"({"prefix": "p", "secret": 1, "alphabet": "01"})", "\"secret\" must be a string"},
      {R"({"prefix": "p", "secret": "", "alphabet": "01"})", "\"secret\" is empty"},
      {R"({"prefix": "p", "secret": "0", "alphabet": "0"})", "at least two"},
      {R"({"prefix": "p", "secret": "0", "alphabet": "010"})", "repeats"},
      {R"({"prefix": "p", "secret": "02", "alphabet": "01"})", "outside the alphabet"},
      {R"({"prefix": "p", "secret": "0", "alphabet": "0\u00e9"})", "ASCII"},
  };
  for (const auto& [line, needle] : bad) {
    SCOPED_TRACE(line);
    write_lines(path, {good, "", line});
    try {
      load_canaries(path);
      ADD_FAILURE() << "expected an error containing " << needle;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path + ":3"), std::string::npos) << what;
      EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
  }
  // The secret is never echoed in an error (canary secrets stand for private data).
  write_lines(path, {R"({"prefix": "p", "secret": "0192", "alphabet": "01"})"});
  try {
    load_canaries(path);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("0192"), std::string::npos) << e.what();
  }
  write_lines(path, {""});
  EXPECT_THROW(load_canaries(path), Error);
  fs::remove(path);
  EXPECT_THROW(load_canaries(path), Error);
}

}  // namespace
}  // namespace lethe
