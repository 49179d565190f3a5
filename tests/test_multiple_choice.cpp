// Multiple-choice accuracy: choice log-likelihoods against a direct forward() written out
// here, acc / acc_norm on a task whose answers are set from those scores, left truncation,
// the harness's context/continuation split, malformed task files, and the shipped task.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/eval/multiple_choice.h"
#include "engine/eval/truth_ratio.h"
#include "engine/io/model_config_yaml.h"
#include "kernels/cross_entropy.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

std::string tmp(const std::string& name) {
  return (fs::temp_directory_path() / ("lethe_mc_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Byte-level tiny model with large weights, so that choices' scores are far apart
// compared with float rounding.
LlamaConfig tiny(int64_t max_seq_len = 256) {
  LlamaConfig c = load_llama_config(std::string(LETHE_SOURCE_DIR) + "/configs/models/tiny.yaml");
  c.init_std = 0.3;
  c.max_seq_len = max_seq_len;
  return c;
}

// Batched (right-padded) scoring vs one unpadded forward per choice: f32 rounding only.
double lp_tol(double ref) { return 1e-4 * std::max(1.0, std::abs(ref)); }

// Reference: one forward over the last max_seq_len predictions of prefix_ids + cont_ids,
// summing log p over the continuation's positions.
double reference_lp(LlamaModel& m, const std::vector<int32_t>& prefix_ids, const std::vector<int32_t>& cont_ids) {
  std::vector<int32_t> whole = prefix_ids;
  whole.insert(whole.end(), cont_ids.begin(), cont_ids.end());
  const int64_t n_pred = int64_t(whole.size()) - 1;
  const int64_t T = std::min(n_pred, m.config().max_seq_len), start = n_pred - T;
  Tensor tok = Tensor::empty({1, T}, DType::i32), tgt = Tensor::empty({1, T}, DType::i32);
  for (int64_t t = 0; t < T; ++t) {
    tok.data<int32_t>()[t] = whole[size_t(start + t)];
    tgt.data<int32_t>()[t] = whole[size_t(start + t + 1)];
  }
  m.forward(tok, tgt);
  double s = 0;
  for (int64_t t = T - int64_t(cont_ids.size()); t < T; ++t) s += double(m.logprobs().data<float>()[t]);
  return s;
}

double reference_lp(LlamaModel& m, const std::string& question, const std::string& choice) {
  return reference_lp(m, bytes_encode(question + "\nAnswer:"), bytes_encode(" " + choice));
}

std::string letters(int64_t n, uint64_t seed) {
  const Tensor t = test::randint({n}, 26, seed);
  std::string s;
  for (int64_t i = 0; i < n; ++i) s += char('a' + t.data<int32_t>()[i]);
  return s;
}

int64_t argmax(const std::vector<double>& v) { return int64_t(std::max_element(v.begin(), v.end()) - v.begin()); }

// Smallest gap between the best score and any other: items whose winner could flip under
// float rounding are not used.
double margin(const std::vector<double>& v) {
  const int64_t b = argmax(v);
  double m = 1e300;
  for (size_t i = 0; i < v.size(); ++i)
    if (int64_t(i) != b) m = std::min(m, v[size_t(b)] - v[i]);
  return m;
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path, std::ios::binary);
  for (const auto& l : lines) out << l << "\n";
}

TEST(MultipleChoice, AccuracyFromKnownScores) {
  LlamaModel m(tiny());
  m.init_weights(21);
  std::vector<std::string> lines;
  int64_t expect_acc = 0, expect_norm = 0, disagree = 0;
  std::vector<double> expect_tr, tr_tol;
  for (uint64_t seed = 0; lines.size() < 12 && seed < 200; ++seed) {
    const std::string q = "Question " + std::to_string(seed) + ": " + letters(20, 1000 + seed) + "?";
    std::vector<std::string> choices;
    std::vector<double> lp, norm;
    for (uint64_t c = 0; c < 4; ++c) {
      // Lengths 1..12 so that summed and per-character scores often pick different choices.
      const int64_t len = 1 + test::randint({1}, 12, 5000 + seed * 4 + c).data<int32_t>()[0];
      choices.push_back(letters(len, 9000 + seed * 4 + c));
      lp.push_back(reference_lp(m, q, choices.back()));
      norm.push_back(lp.back() / double(len));
    }
    if (margin(lp) < 1e-2 || margin(norm) < 1e-2) continue;
    const int64_t pred = argmax(lp), pred_norm = argmax(norm);
    disagree += pred != pred_norm;
    // The answer is set by rule: the summed-score winner, the per-character winner, or a
    // choice that is neither, so each metric's expected count is known.
    int64_t answer = 0;
    switch (lines.size() % 3) {
      case 0: answer = pred; break;
      case 1: answer = pred_norm; break;
      default:
        while (answer == pred || answer == pred_norm) ++answer;
    }
    expect_acc += answer == pred;
    expect_norm += answer == pred_norm;
    // Truth ratio from the direct scores: a choice of len letters is len + 1 byte tokens
    // (the leading space). log R moves by at most the true answer's per-token error plus the
    // wrong choices' mean of theirs, each lp_tol / tokens: R's relative tolerance is twice
    // the largest.
    std::vector<int64_t> tokens;
    double worst = 0;
    for (size_t c = 0; c < 4; ++c) {
      tokens.push_back(int64_t(choices[c].size()) + 1);
      worst = std::max(worst, lp_tol(lp[c]) / double(tokens.back()));
    }
    expect_tr.push_back(truth_ratio(lp, tokens, answer));
    tr_tol.push_back(2 * worst * 1.01);  // 1.01: exp's curvature over so small a step
    lines.push_back(json{{"question", q}, {"choices", choices}, {"answer", answer}}.dump());
    // choice_logprobs (batched over choices) agrees with the direct computation.
    McItem it{q, choices, answer, 0};
    const auto got = choice_logprobs(m, it, bytes_encode);
    for (size_t c = 0; c < 4; ++c) EXPECT_NEAR(got[c], lp[c], lp_tol(lp[c]));
  }
  ASSERT_EQ(lines.size(), 12u);
  ASSERT_GE(disagree, 2) << "the task must separate acc from acc_norm";
  const std::string path = tmp("known.jsonl");
  write_lines(path, lines);
  const McResult r = multiple_choice_accuracy(m, path, bytes_encode);
  EXPECT_EQ(r.items, 12);
  EXPECT_DOUBLE_EQ(r.acc, double(expect_acc) / 12);
  EXPECT_DOUBLE_EQ(r.acc_norm, double(expect_norm) / 12);
  EXPECT_NE(r.acc, r.acc_norm);
  ASSERT_EQ(r.truth_ratios.size(), 12u);
  for (size_t k = 0; k < 12; ++k)
    EXPECT_NEAR(r.truth_ratios[k], expect_tr[k], tr_tol[k] * expect_tr[k]) << "item " << k;
  fs::remove(path);
}

TEST(MultipleChoice, AccNormCountsCharactersNotBytes) {
  // Two choices whose summed scores are made equal per byte but not per character: with a
  // model whose logits are all 0 every byte costs log(1/256), so a choice's score is
  // -(bytes + 1) * log 256 (the leading space included).
  LlamaModel m(tiny());
  m.init_weights(22);
  Tensor& head = m.params().get("lm_head.weight");
  std::fill(head.data<float>(), head.data<float>() + head.numel(), 0.0f);
  // "\xc3\xa9\xc3\xa9" (2 characters, 4 bytes) vs "abc" (3 characters, 3 bytes):
  // summed: -5L vs -4L -> "abc" wins acc. Per character: -2.5L vs -1.33L -> "abc" wins.
  // Per byte it would be -1.25L vs -1.33L -> the accented choice, so answer 1 scores for
  // acc_norm only when it divides by characters, as the harness's len(choice) does.
  const std::string path = tmp("chars.jsonl");
  write_lines(path, {json{{"question", "q"}, {"choices", {"\xc3\xa9\xc3\xa9", "abc"}}, {"answer", 1}}.dump()});
  const McResult r = multiple_choice_accuracy(m, path, bytes_encode);
  EXPECT_EQ(r.acc, 1.0);
  EXPECT_EQ(r.acc_norm, 1.0);
  // Ties go to the lowest index: two identical choices, answer 0 is right for both metrics.
  write_lines(path, {json{{"question", "q"}, {"choices", {"same", "same"}}, {"answer", 0}}.dump()});
  const McResult t = multiple_choice_accuracy(m, path, bytes_encode);
  EXPECT_EQ(t.acc, 1.0);
  EXPECT_EQ(t.acc_norm, 1.0);
  fs::remove(path);
}

TEST(MultipleChoice, LongContextIsCutFromTheLeft) {
  LlamaModel m(tiny(32));
  m.init_weights(23);
  const std::string q = letters(60, 77);  // context 68 bytes, window 32
  McItem it{q, {"abc", "xyzzy"}, 0, 0};
  const auto got = choice_logprobs(m, it, bytes_encode);
  for (size_t c = 0; c < 2; ++c) {
    const double ref = reference_lp(m, q, it.choices[c]);
    EXPECT_NEAR(got[c], ref, lp_tol(ref));
  }
  // Cutting matters: the score differs from the one with a context that fits.
  LlamaModel wide(tiny(256));
  wide.init_weights(23);
  EXPECT_GT(std::abs(choice_logprobs(wide, it, bytes_encode)[0] - got[0]), 1e-3);
  // A continuation that cannot fit in the window is an error, not a silent cut.
  McItem too_long{"q", {letters(40, 78)}, 0, 7};
  EXPECT_THROW(choice_logprobs(m, too_long, bytes_encode), Error);
}

TEST(MultipleChoice, ContinuationIsSplitFromTheWholeEncoding) {
  // An encoder that adds BOS (id 1) to every call, as SentencePiece tokenizers do: the
  // continuation must be the tail of encode(context + continuation), with no BOS inside.
  LlamaModel m(tiny());
  m.init_weights(24);
  const TextEncoder with_bos = [](const std::string& s) {
    std::vector<int32_t> ids{1};
    const auto b = bytes_encode(s);
    ids.insert(ids.end(), b.begin(), b.end());
    return ids;
  };
  McItem it{"Who wrote Emma?", {"Austen", "Dickens"}, 0, 0};
  const auto got = choice_logprobs(m, it, with_bos);
  for (size_t c = 0; c < 2; ++c) {
    const double ref = reference_lp(m, with_bos(it.question + "\nAnswer:"), bytes_encode(" " + it.choices[c]));
    EXPECT_NEAR(got[c], ref, lp_tol(ref));
  }
}

TEST(MultipleChoice, MalformedLinesNameFileAndLine) {
  const std::string path = tmp("bad.jsonl");
  const std::string good = R"({"question": "q", "choices": ["a", "b"], "answer": 1})";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"question": "q", "choices": ["a", "b"], "answer": 1)", "not valid JSON"},
      {R"([1, 2])", "JSON object"},
      {R"({"choices": ["a", "b"], "answer": 0})", "missing \"question\""},
      {R"({"question": 5, "choices": ["a"], "answer": 0})", "\"question\" must be a string"},
      {R"({"question": "q", "answer": 0})", "missing \"choices\""},
      {R"({"question": "q", "choices": "a", "answer": 0})", "array of strings"},
      {R"({"question": "q", "choices": [], "answer": 0})", "\"choices\" is empty"},
      {R"({"question": "q", "choices": ["a", 2], "answer": 0})", "choice 1 is not a string"},
      {R"({"question": "q", "choices": ["a", ""], "answer": 0})", "choice 1 is empty"},
      {R"({"question": "q", "choices": ["a", "b"]})", "missing \"answer\""},
      {R"({"question": "q", "choices": ["a", "b"], "answer": 2})", "outside the 2 choices"},
      {R"({"question": "q", "choices": ["a", "b"], "answer": -1})", "outside the 2 choices"},
      {R"({"question": "q", "choices": ["a", "b"], "answer": 1.0})", "integer"},
      {R"({"question": "q", "choices": ["a", "b"], "answer": "1"})", "integer"},
  };
  LlamaModel m(tiny());
  m.init_weights(25);
  for (const auto& [line, needle] : bad) {
    SCOPED_TRACE(line);
    write_lines(path, {good, "", line, good});  // the bad item is on line 3
    try {
      multiple_choice_accuracy(m, path, bytes_encode);
      ADD_FAILURE() << "expected an error containing " << needle;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path + ":3"), std::string::npos) << what;
      EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
  }
  write_lines(path, {"", "  "});
  EXPECT_THROW(load_mc_task(path), Error);  // no items
  fs::remove(path);
  EXPECT_THROW(load_mc_task(path), Error);  // no file
}

TEST(MultipleChoice, ShippedAustenTask) {
  const std::string path = std::string(LETHE_SOURCE_DIR) + "/data/tasks/austen_mc.jsonl";
  const auto items = load_mc_task(path);
  EXPECT_EQ(items.size(), 40u);
  std::vector<int> per_answer(4, 0);
  for (const McItem& it : items) {
    EXPECT_EQ(it.choices.size(), 4u) << "line " << it.line;
    ++per_answer[size_t(it.answer)];
  }
  // Answers spread over positions, so position bias cannot score well.
  for (const int n : per_answer) EXPECT_GE(n, 6);
  LlamaModel m(tiny());
  m.init_weights(26);
  const McResult r = multiple_choice_accuracy(m, path, bytes_encode);
  EXPECT_EQ(r.items, 40);
  EXPECT_GE(r.acc, 0.0);
  EXPECT_LE(r.acc, 1.0);
}

}  // namespace
}  // namespace lethe
