// ROUGE-L and its tokenizer against hand-computed values and Google's rouge-score package;
// greedy decoding against a step-by-step argmax of forward() written out here; the
// verbatim-memorisation evaluation on datasets whose answers are known by construction.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <sstream>

#include <filesystem>
#include <fstream>

#include "engine/data/tokenizer_file.h"
#include "engine/eval/generate.h"
#include "engine/eval/rouge.h"
#include "kernels/cross_entropy.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;
using Words = std::vector<std::string>;

// ROUGE values are ratios of small integers: exact up to double rounding.
constexpr double kRougeTol = 1e-12;

Words words(const std::string& s) {
  std::istringstream in(s);
  Words w;
  for (std::string t; in >> t;) w.push_back(t);
  return w;
}

void expect_rouge(const RougeL& r, double p, double rc, double f) {
  EXPECT_NEAR(r.precision, p, kRougeTol);
  EXPECT_NEAR(r.recall, rc, kRougeTol);
  EXPECT_NEAR(r.f1, f, kRougeTol);
}

TEST(RougeL, HandComputed) {
  // LCS "the cat on the mat" = 5 of 6 on both sides.
  expect_rouge(rouge_l(words("the cat sat on the mat"), words("the cat was on the mat")), 5.0 / 6, 5.0 / 6, 5.0 / 6);
  // LCS "a c": P = 2/5, R = 2/3, F = 2PR/(P+R) = 1/2.
  expect_rouge(rouge_l(words("a b c d e"), words("a x c")), 0.4, 2.0 / 3, 0.5);
  // Precision and recall swap with the arguments.
  expect_rouge(rouge_l(words("a x c"), words("a b c d e")), 2.0 / 3, 0.4, 0.5);
  // A subsequence, not a substring: order matters, gaps do not.
  expect_rouge(rouge_l(words("a b c"), words("c b a")), 1.0 / 3, 1.0 / 3, 1.0 / 3);
  expect_rouge(rouge_l(words("x a y b z c"), words("a b c")), 0.5, 1.0, 2.0 / 3);
  expect_rouge(rouge_l(words("same words here"), words("same words here")), 1, 1, 1);
  expect_rouge(rouge_l(words("p q"), words("r s t")), 0, 0, 0);
}

TEST(RougeL, EmptyIsZero) {
  expect_rouge(rouge_l({}, words("a b")), 0, 0, 0);
  expect_rouge(rouge_l(words("a b"), {}), 0, 0, 0);
  expect_rouge(rouge_l({}, {}), 0, 0, 0);  // rouge-score's convention, even for equal inputs
  expect_rouge(rouge_l_ids({}, {}), 0, 0, 0);
}

TEST(RougeL, TokenIds) {
  expect_rouge(rouge_l_ids({1, 2, 3, 4}, {1, 3, 4, 5, 6}), 0.75, 0.6, 2 * 0.75 * 0.6 / 1.35);
  expect_rouge(rouge_l_ids({7, 7, 7}, {7}), 1.0 / 3, 1.0, 0.5);
}

TEST(RougeTokenize, MatchesRougeScoreDefaultTokenizer) {
  // Expected lists printed by rouge_score.tokenizers.DefaultTokenizer (rouge-score 0.1.2).
  EXPECT_EQ(rouge_tokenize("Hello, World! It's 2024."), (Words{"hello", "world", "it", "s", "2024"}));
  EXPECT_EQ(rouge_tokenize("CamelCase_snake-case x1y2"), (Words{"camelcase", "snake", "case", "x1y2"}));
  EXPECT_EQ(rouge_tokenize("na\xc3\xafve caf\xc3\xa9"), (Words{"na", "ve", "caf"}));  // "naïve café"
  EXPECT_EQ(rouge_tokenize("\xc4\xb0stanbul"), (Words{"i", "stanbul"}));              // U+0130
  EXPECT_EQ(rouge_tokenize("5\xe2\x84\xaag"), (Words{"5kg"}));                         // U+212A
  EXPECT_EQ(rouge_tokenize("  tab\there\nnewline  "), (Words{"tab", "here", "newline"}));
  EXPECT_TRUE(rouge_tokenize("").empty());
  EXPECT_TRUE(rouge_tokenize("  ... -- ").empty());
}

TEST(RougeL, MatchesRougeScoreOnText) {
  // (candidate, reference, P, R, F) from rouge_scorer.RougeScorer(["rougeL"]).score(reference, candidate).
  struct Case {
    const char *cand, *ref;
    double p, r, f;
  };
  const Case cases[] = {
      {"mat the on sat cat the", "the cat sat on the mat", 0.5, 0.5, 0.5},
      {"It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
       "of a wife.",
       "It is a truth universally acknowledged that a single man in possession of a large fortune must want a wife!",
       0.8260869565217391, 0.95, 0.8837209302325583},
      {"Emma Woodhouse, handsome, clever, and rich", "emma woodhouse was rich", 0.5, 0.75, 0.6},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.cand);
    expect_rouge(rouge_l(rouge_tokenize(c.cand), rouge_tokenize(c.ref)), c.p, c.r, c.f);
  }
}

// Large initial weights so the logits differ by much more than float rounding: argmaxes
// are then not decided by near-ties, and a batched and an unbatched forward agree.
LlamaConfig small_config() {
  LlamaConfig c;
  c.name = "generate-test";
  c.vocab_size = 40;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 48;
  c.max_seq_len = 16;  // short, so that decoding runs past it
  c.init_std = 0.5;
  return c;
}

std::vector<int32_t> random_ids(int64_t n, int64_t V, uint64_t seed) {
  const Tensor t = randint({n}, V, seed);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + n);
}

// The reference: one forward per token on the last max_seq_len tokens, argmax of the last
// row with std::max_element (which returns the first maximum).
std::vector<int32_t> stepwise_argmax(LlamaModel& m, std::vector<int32_t> ctx, int64_t n) {
  const int64_t V = m.config().vocab_size;
  std::vector<int32_t> out;
  for (int64_t s = 0; s < n; ++s) {
    const int64_t T = std::min<int64_t>(int64_t(ctx.size()), m.config().max_seq_len);
    Tensor tok = Tensor::empty({1, T}, DType::i32), tgt = Tensor::empty({1, T}, DType::i32);
    std::copy(ctx.end() - T, ctx.end(), tok.data<int32_t>());
    std::fill(tgt.data<int32_t>(), tgt.data<int32_t>() + T, ops::kIgnoreIndex);
    m.set_keep_logits(true);
    m.forward(tok, tgt);
    const float* row = m.logits().data<float>() + (T - 1) * V;
    const int32_t next = int32_t(std::max_element(row, row + V) - row);
    out.push_back(next);
    ctx.push_back(next);
  }
  return out;
}

TEST(Greedy, MatchesStepwiseArgmaxPastMaxSeqLen) {
  LlamaModel m(small_config());
  m.init_weights(3);
  const auto prefix = random_ids(5, 40, 10);
  // 5 + 20 tokens: the last 9 steps see a left-truncated 16-token window.
  const auto got = greedy_continue(m, prefix, 20);
  ASSERT_EQ(got.size(), 20u);
  EXPECT_EQ(got, stepwise_argmax(m, prefix, 20));
  // A model with room for the whole context conditions on all of it, and (with these
  // weights) continues differently: the truncation above is not a no-op.
  LlamaConfig wide = small_config();
  wide.max_seq_len = 64;
  LlamaModel m2(wide);
  m2.init_weights(3);
  const auto full = greedy_continue(m2, prefix, 20);
  EXPECT_EQ(full, stepwise_argmax(m2, prefix, 20));
  EXPECT_TRUE(std::equal(full.begin(), full.begin() + 12, got.begin()));  // same window until it fills
  EXPECT_NE(full, got);
}

TEST(Greedy, StopsAtStopIdAndKeepsIt) {
  LlamaModel m(small_config());
  m.init_weights(4);
  const auto prefix = random_ids(6, 40, 11);
  const auto full = greedy_continue(m, prefix, 12);
  ASSERT_EQ(full.size(), 12u);
  const int32_t stop = full[6];
  const size_t first = size_t(std::find(full.begin(), full.end(), stop) - full.begin());
  const std::vector<int32_t> expected(full.begin(), full.begin() + first + 1);
  EXPECT_EQ(greedy_continue(m, prefix, 12, stop), expected);
  // A stop id never generated changes nothing.
  int32_t absent = 0;
  while (std::find(full.begin(), full.end(), absent) != full.end()) ++absent;
  EXPECT_EQ(greedy_continue(m, prefix, 12, absent), full);
}

TEST(Greedy, TiesGoToLowestId) {
  LlamaModel m(small_config());
  m.init_weights(5);
  Tensor& head = m.params().get("lm_head.weight");  // [V, C]
  const int64_t C = head.dim(1);
  std::fill(head.data<float>(), head.data<float>() + head.numel(), 0.0f);
  const auto prefix = random_ids(4, 40, 12);
  // Every logit exactly 0: a last-maximum rule would give 39.
  EXPECT_EQ(greedy_continue(m, prefix, 5), std::vector<int32_t>(5, 0));
  // Rows 3 and 7 equal to u, rows 4 and 8 to -u: whichever sign u.x has, the maximum is
  // shared by two ids and the lower one (3 or 4) must win.
  const Tensor u = randn({C}, DType::f32, 99);
  for (int64_t c = 0; c < C; ++c) {
    const float x = u.data<float>()[c];
    for (const int64_t r : {3, 7}) head.data<float>()[r * C + c] = x;
    for (const int64_t r : {4, 8}) head.data<float>()[r * C + c] = -x;
  }
  for (const int32_t t : greedy_continue(m, prefix, 8)) EXPECT_TRUE(t == 3 || t == 4) << t;
}

TEST(Greedy, BatchMatchesSingle) {
  LlamaModel m(small_config());
  m.init_weights(6);
  std::vector<std::vector<int32_t>> prefixes;
  for (uint64_t s = 0; s < 3; ++s) prefixes.push_back(random_ids(7, 40, 20 + s));
  std::vector<std::vector<int32_t>> single;
  for (const auto& p : prefixes) single.push_back(greedy_continue(m, p, 12));
  EXPECT_EQ(greedy_continue_batch(m, prefixes, 12), single);
  // Per-row stopping: stop on the first row's 3rd token.
  const int32_t stop = single[0][2];
  std::vector<std::vector<int32_t>> stopped;
  for (const auto& p : prefixes) stopped.push_back(greedy_continue(m, p, 12, stop));
  EXPECT_EQ(greedy_continue_batch(m, prefixes, 12, stop), stopped);
  EXPECT_LE(stopped[0].size(), 3u);
}

TEST(Greedy, RejectsBadInput) {
  LlamaModel m(small_config());
  m.init_weights(7);
  EXPECT_THROW(greedy_continue(m, {}, 3), Error);
  EXPECT_THROW(greedy_continue(m, {1, 40}, 3), Error);  // outside the vocabulary
  EXPECT_THROW(greedy_continue(m, {1, -1}, 3), Error);
  EXPECT_THROW(greedy_continue(m, {1, 2}, -1), Error);
  EXPECT_TRUE(greedy_continue(m, {1, 2}, 0).empty());
  EXPECT_THROW(greedy_continue_batch(m, {{1, 2}, {1, 2, 3}}, 3), Error);  // unequal lengths
  // A NaN in token 0's output row makes its logit NaN: named, never skipped by the argmax.
  m.params().get("lm_head.weight").data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  try {
    greedy_continue(m, {1, 2}, 1);
    ADD_FAILURE() << "decoded past a NaN logit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the logit of token 0 in row 0 is not finite"), std::string::npos)
        << e.what();
  }
}

TEST(BytesDecode, BytesAndRange) {
  EXPECT_EQ(bytes_decode({72, 105, 0, 255}), std::string("Hi\0\xff", 4));
  EXPECT_THROW(bytes_decode({256}), Error);
  EXPECT_THROW(bytes_decode({-1}), Error);
}

// One word per token, so ROUGE over decoded text is ROUGE over the ids: the expected
// scores below follow from the token sequences alone.
std::string word_decode(const std::vector<int32_t>& ids) {
  std::string s;
  for (const int32_t id : ids) {
    s += 't';
    s += std::to_string(id);
    s += ' ';
  }
  return s;
}

TEST(Verbatim, SkipsShortDocsAndScoresKnownContinuations) {
  LlamaModel m(small_config());
  m.init_weights(8);
  const int64_t P = 8, K = 4;
  TokenDataset ds;
  ds.tokenizer = "test";
  ds.vocab_size = 40;
  ds.offsets = {0};
  auto add = [&](const std::vector<int32_t>& doc) {
    ds.tokens.insert(ds.tokens.end(), doc.begin(), doc.end());
    ds.offsets.push_back(int64_t(ds.tokens.size()));
  };
  auto memorised = [&](uint64_t seed, int64_t extra) {  // prefix + the model's own continuation
    std::vector<int32_t> doc = random_ids(P, 40, seed);
    const auto gen = greedy_continue(m, doc, K);
    doc.insert(doc.end(), gen.begin(), gen.end());
    const auto tail = random_ids(extra, 40, seed + 1000);
    doc.insert(doc.end(), tail.begin(), tail.end());
    return doc;
  };
  add(memorised(30, 3));          // exact
  add(random_ids(P + K - 1, 40, 31));  // one token short: skipped
  add(memorised(32, 0));          // exact, exactly P + K tokens
  add(random_ids(3, 40, 33));     // skipped
  std::vector<int32_t> c = memorised(34, 2);
  // Last continuation token replaced by one absent from the continuation: LCS 3 of 4.
  int32_t x = 0;
  while (std::find(c.begin() + P, c.begin() + P + K, x) != c.begin() + P + K) ++x;
  c[size_t(P + K - 1)] = x;
  add(c);

  const VerbatimResult r = verbatim_memorisation(m, ds, P, K, 0, word_decode);
  EXPECT_EQ(r.docs, 3);
  EXPECT_EQ(r.skipped, 2);
  EXPECT_NEAR(r.exact_match_rate, 2.0 / 3, 1e-12);
  EXPECT_NEAR(r.rouge_l_f1_mean, (1 + 1 + 0.75) / 3, 1e-12);
  EXPECT_NEAR(r.rouge_l_recall_mean, (1 + 1 + 0.75) / 3, 1e-12);

  const VerbatimResult batched = verbatim_memorisation(m, ds, P, K, 0, word_decode, 2);
  EXPECT_EQ(batched.docs, 3);
  EXPECT_EQ(batched.exact_match_rate, r.exact_match_rate);
  EXPECT_EQ(batched.rouge_l_f1_mean, r.rouge_l_f1_mean);

  // The first two eligible documents only: both reproduced exactly.
  const VerbatimResult two = verbatim_memorisation(m, ds, P, K, 2, word_decode);
  EXPECT_EQ(two.docs, 2);
  EXPECT_EQ(two.exact_match_rate, 1.0);
  EXPECT_NEAR(two.rouge_l_f1_mean, 1.0, 1e-12);

  // Nothing long enough: zero documents, zero scores, no division by zero.
  const VerbatimResult none = verbatim_memorisation(m, ds, 30, 10, 0, word_decode);
  EXPECT_EQ(none.docs, 0);
  EXPECT_EQ(none.skipped, 5);
  EXPECT_EQ(none.exact_match_rate, 0.0);

  EXPECT_THROW(verbatim_memorisation(m, ds, 0, K, 0, word_decode), Error);
  EXPECT_THROW(verbatim_memorisation(m, ds, P, 0, 0, word_decode), Error);
}

// The byte-level path end to end: with bytes_decode, ROUGE sees words of the text.
TEST(Verbatim, ByteLevelDataset) {
  LlamaConfig cfg = small_config();
  cfg.vocab_size = 256;
  LlamaModel m(cfg);
  m.init_weights(9);
  const std::string prefix = "It was a fine ";
  std::vector<int32_t> doc(prefix.begin(), prefix.end());
  const auto gen = greedy_continue(m, doc, 6);
  doc.insert(doc.end(), gen.begin(), gen.end());
  TokenDataset ds;
  ds.tokenizer = "bytes";
  ds.vocab_size = 256;
  ds.tokens = doc;
  ds.offsets = {0, int64_t(doc.size())};
  const VerbatimResult r = verbatim_memorisation(m, ds, int64_t(prefix.size()), 6, 0, bytes_decode);
  EXPECT_EQ(r.docs, 1);
  EXPECT_EQ(r.exact_match_rate, 1.0);
  // Identical text scores 1 when it has any [a-z0-9] word, and 0 (rouge-score's empty
  // convention) when it has none.
  const bool has_word = !rouge_tokenize(bytes_decode(gen)).empty();
  EXPECT_NEAR(r.rouge_l_f1_mean, has_word ? 1.0 : 0.0, 1e-12);
}

}  // namespace
}  // namespace lethe

namespace lethe {
namespace {

// Decoding vocabularies found next to a model: transformers' tokenizer.json (byte-level BPE
// and SentencePiece-style), lethe's own format, and clear errors for the rest.
TEST(TokenizerFile, FindsAndDecodesEachKind) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("lethe_tokfile_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  };
  EXPECT_EQ(find_detokenizer(dir.string()), nullptr) << "no tokenizer.json: nothing to decode with";
  write("tokenizer.json",
        R"({"model": {"type": "BPE", "vocab": {"a": 0, "\u0120b": 1}}, "decoder": {"type": "ByteLevel"},
            "added_tokens": [{"id": 2, "content": "<|end|>"}]})");
  auto bpe = find_detokenizer(dir.string());
  ASSERT_NE(bpe, nullptr);
  EXPECT_EQ(bpe->decode({0, 1, 1}), "a b b");
  EXPECT_EQ(bpe->vocab_size(), 3u);
  auto sp = find_detokenizer(write("sp.json",
                                   R"({"model": {"type": "BPE", "vocab": {"\u2581hi": 0, "<0x21>": 1}},
                                       "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]}})"));
  ASSERT_NE(sp, nullptr);
  EXPECT_EQ(sp->decode({0, 1}), " hi!");
  auto lt = find_detokenizer(write("lt.json", R"({"format": "lethe-tokenizer", "model": "gpt2", "tokens": ["x", "y"]})"));
  EXPECT_EQ(lt->decode({1, 0}), "yx");
  auto expect_error = [&](const std::string& file, const std::string& needle) {
    try {
      find_detokenizer(file);
      FAIL() << file;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(write("wp.json", R"({"model": {"type": "WordPiece", "vocab": {}}})"), "not a BPE tokenizer.json");
  expect_error(write("nodec.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})"), "neither byte-level");
  expect_error(write("trunc.json", R"({"model": {"type": "BPE", "vo)"), "not a JSON object");
  expect_error(write("neg.json", R"({"model": {"type": "BPE", "vocab": {"a": -3}}, "decoder": {"type": "ByteLevel"}})"),
               "out of range");
  expect_error((dir / "missing.json").string(), "cannot open");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lethe
