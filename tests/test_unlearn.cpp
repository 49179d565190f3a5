// Unlearning end to end on a model trained inside the test: random-letter "secret"
// documents (forget) are memorised next to English text (retain); unseen random-letter
// documents are the holdout. Then:
//   GA+GD (lr 1e-3) until forget NLL reaches holdout NLL: it gets there without diverging,
//     and retain NLL moves by less than a tenth of what forget NLL moved;
//   GA alone at a high learning rate (1e-2): retain NLL rises by > 1 nat (collapse).
// Also: the report never contains document text, and bad recipes are clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <fstream>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>

#include "engine/cli/commands.h"
#include "engine/core/rng.h"
#include "engine/data/token_dataset.h"
#include "engine/eval/exposure.h"
#include "engine/eval/multiple_choice.h"
#include "engine/eval/nll.h"
#include "engine/io/model_loader.h"
#include "engine/unlearn/recipe.h"
#include "engine/unlearn/run_state.h"
#include "engine/unlearn/unlearner.h"
#include "tests/unlearn_data.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

using test::docs;
using test::letters;

class Unlearn : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("lethe_unlearn_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::vector<std::string> forget, holdout, retain;
    for (int i = 0; i < 4; ++i) forget.push_back("SECRET-MARKER-" + letters(uint64_t(i), 120));
    for (int i = 0; i < 4; ++i) holdout.push_back("SECRET-MARKER-" + letters(uint64_t(100 + i), 120));
    std::ifstream corpus(std::string(LETHE_SOURCE_DIR) + "/configs/demo/corpus.txt");
    for (std::string para, line; std::getline(corpus, line);) {
      if (line.empty()) {
        if (!para.empty()) retain.push_back(para);
        para.clear();
      } else {
        para += line + "\n";
      }
    }
    save_token_dataset((dir_ / "forget.h5").string(), docs(forget));
    save_token_dataset((dir_ / "holdout.h5").string(), docs(holdout));
    save_token_dataset((dir_ / "retain.h5").string(), docs(retain));
    // Pretrain on forget + retain: the secrets get memorised, the holdout never seen.
    std::ofstream(dir_ / "train.yaml") << "model: " << LETHE_SOURCE_DIR << "/configs/models/tiny.yaml\n"
                                       << "data: {path: [forget.h5, retain.h5], min_targets: 8}\n"
                                       << "train: {steps: 400, batch_size: 8, seq_len: 64, log_every: 1000, seed: 3}\n"
                                       << "optimizer: {lr: 3.0e-3, schedule: cosine, warmup_steps: 20, min_lr: 3.0e-4}\n"
                                       << "checkpoint: {dir: model}\n";
    std::ostringstream log;
    cli::run_train((dir_ / "train.yaml").string(), {}, log);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  std::string recipe(const std::string& name, const std::string& terms, double lr, int steps,
                     const std::string& extra = "") {
    const std::string p = (dir_ / (name + ".yaml")).string();
    std::ofstream(p) << "method: " << name << "\nmodel: model\n"
                     << "data: {forget: forget.h5, retain: retain.h5, holdout: holdout.h5, seq_len: 64, min_targets: 8}\n"
                     << "terms:\n" << terms
                     << "train: {steps: " << steps << ", batch_size: 4, log_every: 100, seed: 1}\n"
                     << "optimizer: {lr: " << lr << ", schedule: constant}\n"
                     << "eval: {every: 5, max_sequences: 0}\n"
                     << "output: {dir: out_" << name << "}\n" << extra;
    return p;
  }
  static fs::path dir_;
};
fs::path Unlearn::dir_;

double nll(const EvalPoint& e, const char* s) { return e.splits.at(s).nll; }
const std::string kMcTask = std::string(LETHE_SOURCE_DIR) + "/data/tasks/austen_mc.jsonl";

TEST_F(Unlearn, GaGdForgetsAndKeepsRetain) {
  // GA+GD run until the seed study's criterion (forget NLL >= holdout NLL, checked every 5
  // steps) rather than for a fixed number of steps: past that point ascent has nothing
  // left to remove and pushes every letter sequence up together (on some BLAS kernels
  // forget and holdout both reached ~21 nats after 40 fixed steps, in either order). The
  // assertions are about the run itself, not about one machine's trajectory: it reaches
  // the criterion (about step 20 at lr 1e-3, on every OpenBLAS kernel), with the margins
  // below measured against its own starting point.
  std::ostringstream log;
  const int max_steps = 80;
  // Canaries: the 4 letters after each document's first 20 (26^4 candidates).
  for (const auto& [file, base] : {std::pair{"forget_canaries.jsonl", 0}, std::pair{"holdout_canaries.jsonl", 100}}) {
    std::ofstream out(dir_ / file);
    for (int i = 0; i < 4; ++i) {
      const std::string text = "SECRET-MARKER-" + letters(uint64_t(base + i), 120);
      out << nlohmann::json{{"prefix", text.substr(0, 34)}, {"secret", text.substr(34, 4)},
                            {"alphabet", "abcdefghijklmnopqrstuvwxyz"}}.dump()
          << "\n";
    }
  }
  const auto res = run_unlearn(load_recipe(recipe("ga_gd", "  f: {type: nll, stream: forget, weight: -1}\n"
                                                           "  r: {type: nll, stream: retain, weight: 1}\n",
                                                  1e-3, max_steps, "stop: {forget_reaches_holdout: true}\n"),
                                           {"eval.verbatim_prefix=24", "eval.verbatim_continuation=24",
                                            "eval.mc_tasks.austen=" + kMcTask, "eval.mc_tasks.again=" + kMcTask,
                                            "eval.canaries.forget=" + (dir_ / "forget_canaries.jsonl").string(),
                                            "eval.canaries.holdout=" + (dir_ / "holdout_canaries.jsonl").string()}),
                               log);
  const EvalPoint &before = res.evals.front(), &after = res.evals.back();
  // Memorised before: the secrets are far more predictable than unseen random letters.
  ASSERT_LT(nll(before, "forget"), nll(before, "holdout") - 0.5) << log.str();
  // It reached the criterion, by the criterion's own check, before the step budget ran out.
  EXPECT_EQ(res.stop_reason, "forget NLL reached holdout NLL") << log.str();
  EXPECT_LT(res.steps_run, max_steps) << log.str();
  EXPECT_GE(nll(after, "forget"), nll(after, "holdout")) << log.str();
  // Ascent raises the unseen letters' NLL too (they share the secrets' alphabet); what
  // must close is the gap, and with it the membership signal: the in-run MIA AUC moves at
  // least halfway from where it started to chance (0.5).
  EXPECT_LT(std::abs(after.mia_auc - 0.5), 0.5 * std::abs(before.mia_auc - 0.5)) << log.str();
  // Retain kept: it moved by less than a tenth of the distance the forget NLL travelled.
  EXPECT_LT(std::abs(nll(after, "retain") - nll(before, "retain")),
            0.1 * (nll(after, "forget") - nll(before, "forget")))
      << log.str();
  // Verbatim: the memorised secrets are continued far better before than after.
  EXPECT_GT(res.extra.at("before").rouge_l_f1, res.extra.at("after").rouge_l_f1 + 0.2) << log.str();
  EXPECT_EQ(res.extra.at("after").verbatim_docs, 4) << "verbatim reads every forget document";
  // The criterion was checked on the selection half; the final suite scores the other.
  EXPECT_TRUE(res.selection_split);
  EXPECT_EQ(res.in_run_docs.at("forget"), 2);
  EXPECT_EQ(res.final_docs.at("holdout"), 2);
  EXPECT_EQ(res.mia.at("after").members.by_attack.at("loss").size(), 2u);
  // Named multiple-choice tasks, each scored before and after: "before" is the original
  // model's accuracy, as scoring it directly gives.
  const auto& mc = res.extra.at("before").mc_tasks;
  ASSERT_EQ(mc.size(), 2u);
  LlamaModel original(load_model((dir_ / "model").string()).config);
  assign_weights(original, load_model((dir_ / "model").string()));
  const McResult direct = multiple_choice_accuracy(original, kMcTask, bytes_encode);
  EXPECT_EQ(mc.at("austen").items, direct.items);
  EXPECT_EQ(mc.at("austen").acc, direct.acc);
  EXPECT_EQ(mc.at("again").acc_norm, direct.acc_norm);
  EXPECT_EQ(res.extra.at("after").mc_tasks.count("austen"), 1u);
  // Canary exposure: "before" is the original model's, as scoring it directly gives.
  const auto& can = res.extra.at("before").canaries;
  ASSERT_EQ(can.size(), 2u);
  ASSERT_EQ(can.at("forget").exposures.size(), 4u);
  EXPECT_NEAR(can.at("forget").log2_space_max, 4 * std::log2(26.0), 1e-12);
  for (const char* set : {"forget", "holdout"}) {
    const uint64_t seed = 1 * 1000003 + std::hash<std::string>{}(set);  // train.seed 1, as the run seeds it
    const ExposureSetResult direct_exp =
        canary_set_exposure(original, (dir_ / (std::string(set) + "_canaries.jsonl")).string(), bytes_encode, seed);
    EXPECT_EQ(can.at(set).exposures, direct_exp.exposures) << set;
  }
  // The memorised secrets rank near the top of 26^4 = 2^18.8 before (every one first, here)
  // and unseen ones about the middle (1.4 bits on average); the run, stopped where forget
  // NLL reaches holdout NLL, takes most of that away. 8 bits = a rank 256 times lower.
  const double fb = can.at("forget").mean, hb = can.at("holdout").mean;
  const double fa = res.extra.at("after").canaries.at("forget").mean;
  EXPECT_GT(fb, hb + 8) << "before: forget " << fb << " bits, holdout " << hb;
  EXPECT_LT(fa, fb - 8) << "forget canaries: " << fb << " bits before, " << fa << " after";
  // The report names documents by hash only.
  std::ifstream rep(dir_ / "out_ga_gd" / "report.json");
  const std::string text((std::istreambuf_iterator<char>(rep)), {});
  const nlohmann::json rj = nlohmann::json::parse(text);
  EXPECT_EQ(rj.at("multiple_choice_tasks").at("austen").at("before").at("acc").get<double>(), direct.acc);
  EXPECT_TRUE(rj.at("multiple_choice_tasks").at("again").contains("after"));
  EXPECT_EQ(text.find("SECRET-MARKER"), std::string::npos);
  EXPECT_NE(text.find("forgotten_documents_sha256"), std::string::npos);
  EXPECT_EQ(log.str().find("SECRET-MARKER"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ / "out_ga_gd" / "final" / "COMPLETE"));
  EXPECT_TRUE(fs::exists(dir_ / "out_ga_gd" / "curves.svg"));
  // Every step line reports a positive throughput.
  std::ifstream metrics(dir_ / "out_ga_gd" / "metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("eval")) continue;
    EXPECT_GT(j.at("tokens_per_s").get<double>(), 0) << line;
    ++steps;
  }
  EXPECT_GT(steps, 0);
}

// eval.cache: the original's and the oracle's final evaluations are scored once and read
// back by later runs against the same pair, with every number unchanged; a setting that
// changes them misses, and a damaged entry is scored again and rewritten.
TEST_F(Unlearn, EvalCacheReusesTheFixedModelsAndChangesNoNumber) {
  const std::string p = recipe("cache", "  f: {type: nll, stream: forget, weight: -1}\n"
                                        "  r: {type: nll, stream: retain, weight: 1}\n",
                               1e-3, 3, "oracle: model\n");
  const std::string cache = (dir_ / "eval_cache").string();
  auto run = [&](const std::string& out, std::vector<std::string> ov, std::string* log_text = nullptr) {
    ov.push_back("output.dir=" + (dir_ / out).string());
    ov.push_back("eval.verbatim_prefix=24");
    ov.push_back("eval.verbatim_continuation=8");
    ov.push_back("eval.mc_task=" + kMcTask);
    std::ostringstream log;
    UnlearnResult res = run_unlearn(load_recipe(p, ov), log);
    if (log_text) *log_text = log.str();
    return res;
  };
  std::string log_b, log_c, log_d, log_e;
  const UnlearnResult a = run("cache_a", {});
  const UnlearnResult b = run("cache_b", {"eval.cache=" + cache}, &log_b);
  const UnlearnResult c = run("cache_c", {"eval.cache=" + cache, "optimizer.lr=2e-3"}, &log_c);
  EXPECT_TRUE(a.cached.empty());
  EXPECT_TRUE(b.cached.empty()) << log_b;
  EXPECT_NE(log_b.find("the oracle is scored (no entry)"), std::string::npos) << log_b;
  EXPECT_EQ(c.cached, (std::vector<std::string>{"original", "oracle"})) << log_c;
  EXPECT_NE(log_c.find("the oracle's final evaluation from"), std::string::npos) << log_c;
  // The runs took different steps, so what they unlearned differs; what they say about the
  // models they did not change is the same number, to the last bit.
  auto same_fixed = [&](const UnlearnResult& x, const UnlearnResult& y, const char* what) {
    for (const char* who : {"before", "oracle", "oracle_in_run"})
      for (const auto& [split, s] : x.final_evals.at(who).splits) {
        EXPECT_EQ(s.nll, y.final_evals.at(who).splits.at(split).nll) << what << " " << who << " " << split;
        EXPECT_EQ(s.tokens, y.final_evals.at(who).splits.at(split).tokens) << what << " " << who << " " << split;
      }
    for (const char* who : {"before", "oracle"}) {
      EXPECT_EQ(x.mia.at(who).members.by_attack, y.mia.at(who).members.by_attack) << what << " " << who;
      EXPECT_EQ(x.mia.at(who).nonmembers.by_attack, y.mia.at(who).nonmembers.by_attack) << what << " " << who;
      EXPECT_EQ(x.extra.at(who).rouge_l_f1, y.extra.at(who).rouge_l_f1) << what << " " << who;
      EXPECT_EQ(x.extra.at(who).mc_truth_ratios, y.extra.at(who).mc_truth_ratios) << what << " " << who;
    }
    EXPECT_EQ(x.mia_auc_oracle, y.mia_auc_oracle) << what;
  };
  same_fixed(a, b, "scored twice");
  same_fixed(a, c, "read from the cache");
  EXPECT_NE(c.final_evals.at("after").splits.at("forget").nll, a.final_evals.at("after").splits.at("forget").nll)
      << "the unlearned model itself is always scored";
  {
    std::ifstream in(dir_ / "cache_c" / "report.json");
    const nlohmann::json j = nlohmann::json::parse(in);
    EXPECT_EQ(j.at("final_eval").at("from_eval_cache"), nlohmann::json({"original", "oracle"}));
  }
  // Entries hold numbers, never document text.
  for (const auto& f : fs::directory_iterator(cache)) {
    std::ifstream in(f.path());
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    EXPECT_EQ(text.find("SECRET-MARKER"), std::string::npos) << f.path();
  }
  // A setting the scores depend on is another key.
  const UnlearnResult d = run("cache_d", {"eval.cache=" + cache, "eval.mia_max_tokens=64"}, &log_d);
  EXPECT_TRUE(d.cached.empty()) << log_d;
  // A damaged entry is a miss: scored again, the same numbers, and the entry rewritten.
  int damaged = 0;
  for (const auto& f : fs::directory_iterator(cache))
    if (f.path().extension() == ".json") {
      std::ofstream(f.path(), std::ios::trunc) << "{\"key\": [1, 2";
      ++damaged;
    }
  EXPECT_EQ(damaged, 4) << "two models under two eval settings";
  const UnlearnResult e = run("cache_e", {"eval.cache=" + cache}, &log_e);
  EXPECT_TRUE(e.cached.empty()) << log_e;
  EXPECT_NE(log_e.find("cannot be read"), std::string::npos) << log_e;
  same_fixed(a, e, "scored after the damage");
  const UnlearnResult f = run("cache_f", {"eval.cache=" + cache});
  EXPECT_EQ(f.cached.size(), 2u) << "the rewritten entries serve the next run";
}

TEST_F(Unlearn, GaAloneAtHighLearningRateCollapsesRetain) {
  std::ostringstream log;
  const auto res = run_unlearn(load_recipe(recipe("ga", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-2, 40), {}),
                               log);
  EXPECT_GT(nll(res.evals.back(), "retain"), nll(res.evals.front(), "retain") + 1.0) << log.str();
}

// Every shipped recipe (configs/recipes) loads and runs a step on the embedded benchmark.
TEST_F(Unlearn, EveryShippedRecipeRunsOneStep) {
  int n = 0;
  // The recipes for the embedded benchmark; subdirectories (configs/recipes/entities) hold
  // benchmarks whose models `make entities` builds.
  for (const auto& e : fs::directory_iterator(std::string(LETHE_SOURCE_DIR) + "/configs/recipes")) {
    if (!e.is_regular_file() || e.path().extension() != ".yaml") continue;
    std::ostringstream log;
    const std::string out = (dir_ / ("recipe_" + e.path().stem().string())).string();
    const auto res = run_unlearn(
        load_recipe(e.path().string(), {"train.steps=1", "eval.max_sequences=4", "eval.final_max_sequences=4", "eval.mia_max_docs=1", "output.dir=" + out}), log);
    EXPECT_EQ(res.steps_run, 1) << e.path();
    EXPECT_TRUE(fs::exists(fs::path(out) / "report.json")) << e.path();
    ++n;
  }
  EXPECT_GE(n, 10);
}

// The benchmark recipes in subdirectories (their models come from `make entities` or `make
// models`, so they cannot run here) at least parse: every key known, every value valid.
TEST(Recipes, EveryBenchmarkRecipeParses) {
  int n = 0;
  for (const auto& e : fs::recursive_directory_iterator(std::string(LETHE_SOURCE_DIR) + "/configs/recipes")) {
    if (!e.is_regular_file() || e.path().extension() != ".yaml" || e.path().parent_path().filename() == "recipes")
      continue;
    SCOPED_TRACE(e.path().string());
    const Recipe r = load_recipe(e.path().string(), {});
    EXPECT_FALSE(r.terms.empty());
    ++n;
  }
  EXPECT_GE(n, 5);  // entities: 3, cross_domain: 2
}

std::set<std::string> hashes_of(const TokenDataset& ds, const std::vector<int64_t>& docs) {
  std::set<std::string> out;
  for (int64_t d : docs) out.insert(to_hex(ds.doc_sha256[size_t(d)]));
  return out;
}

// The halves of the selection split: disjoint, covering, floor / ceil of n, drawn by
// content (the same documents whatever the order in the file), also without stored hashes.
TEST(SelectionSplit, HalvesAreDisjointCoveringSizedAndIndependentOfOrder) {
  for (int n : {2, 3, 4, 7, 10, 31}) {
    SCOPED_TRACE("n " + std::to_string(n));
    std::vector<std::string> texts;
    for (int i = 0; i < n; ++i) texts.push_back("doc-" + letters(uint64_t(500 + i), 20 + i));
    const TokenDataset ds = docs(texts);
    const DocHalves h = split_documents_by_hash(ds);
    EXPECT_EQ(h.selection.size(), size_t(n / 2));
    EXPECT_EQ(h.report.size(), size_t(n - n / 2));
    std::vector<int64_t> all = h.selection;
    all.insert(all.end(), h.report.begin(), h.report.end());
    std::sort(all.begin(), all.end());
    std::vector<int64_t> want(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) want[size_t(i)] = i;
    EXPECT_EQ(all, want) << "every document in exactly one half";
    EXPECT_TRUE(std::is_sorted(h.selection.begin(), h.selection.end()));
    // Deterministic, and by content: reversed and rotated files give the same documents.
    const DocHalves again = split_documents_by_hash(ds);
    EXPECT_EQ(again.selection, h.selection);
    for (int shift : {1, n / 2}) {
      std::vector<std::string> moved(texts.rbegin(), texts.rend());
      std::rotate(moved.begin(), moved.begin() + shift, moved.end());
      const TokenDataset ds2 = docs(moved);
      const DocHalves h2 = split_documents_by_hash(ds2);
      EXPECT_EQ(hashes_of(ds2, h2.selection), hashes_of(ds, h.selection)) << "shift " << shift;
      EXPECT_EQ(hashes_of(ds2, h2.report), hashes_of(ds, h.report)) << "shift " << shift;
    }
    // The rule itself: sorted by hash, the smallest goes to the report half, the next to selection.
    std::vector<std::pair<std::string, int64_t>> by_hash;
    for (int i = 0; i < n; ++i) by_hash.emplace_back(to_hex(ds.doc_sha256[size_t(i)]), i);
    std::sort(by_hash.begin(), by_hash.end());
    EXPECT_EQ(std::count(h.report.begin(), h.report.end(), by_hash[0].second), 1);
    EXPECT_EQ(std::count(h.selection.begin(), h.selection.end(), by_hash[1].second), 1);
    // A file without per-document hashes splits by its token ids, the same way every time.
    TokenDataset bare = ds;
    bare.doc_sha256.clear();
    const DocHalves hb = split_documents_by_hash(bare);
    EXPECT_EQ(hb.selection.size(), size_t(n / 2));
    EXPECT_EQ(split_documents_by_hash(bare).report, hb.report);
    // The subset holds exactly those documents, hashes included.
    const TokenDataset sub = subset_token_dataset(ds, h.report);
    ASSERT_EQ(sub.n_docs(), int64_t(h.report.size()));
    for (size_t i = 0; i < h.report.size(); ++i) {
      EXPECT_EQ(sub.doc_sha256[i], ds.doc_sha256[size_t(h.report[i])]);
      EXPECT_EQ(sub.doc_length(int64_t(i)), ds.doc_length(h.report[i]));
    }
  }
}

// The resume fingerprint tells the two settings apart; a run from before the key existed
// (every document for both) carries the fingerprint of selection_split: false.
TEST(SelectionSplit, ResumeFingerprintNamesTheSetting) {
  Recipe r;
  r.eval_every = 5;
  r.eval_max_sequences = 7;
  const nlohmann::json on = run_fingerprint(r, "m", {});
  r.eval_selection_split = false;
  const nlohmann::json off = run_fingerprint(r, "m", {});
  EXPECT_NE(on.at("eval"), off.at("eval"));
  EXPECT_EQ(on.at("eval").at("selection_split"), true);
  EXPECT_EQ(off.at("eval"), (nlohmann::json{{"every", 5}, {"max_sequences", 7}}));
}

// NLL of the original model (step 0) over the given documents of a split file, as the run
// computes it (every sequence, batches of 8).
double original_nll(const fs::path& model, const fs::path& file, const std::vector<int64_t>* docs) {
  const LoadedModel w = load_model(model.string());
  LlamaModel m(w.config, DType::f32);
  assign_weights(m, w);
  const TokenDataset all = load_token_dataset(file.string(), 256);
  return evaluate_nll(m, docs ? subset_token_dataset(all, *docs) : all, 64, 8, 0).mean_nll();
}

// In-run evaluations (what the stop rules and the best checkpoint read) see only the
// selection half of forget and holdout; the final evaluation and the MIA suite only the
// report half; eval.selection_split: false gives both every document, as before.
TEST_F(Unlearn, InRunReadsTheSelectionHalfAndTheReportTheOther) {
  const std::string p = recipe("halves", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-3, 0);
  const DocHalves hf = split_documents_by_hash(load_token_dataset((dir_ / "forget.h5").string(), 0));
  const DocHalves hh = split_documents_by_hash(load_token_dataset((dir_ / "holdout.h5").string(), 0));
  const int64_t n_retain = load_token_dataset((dir_ / "retain.h5").string(), 0).n_docs();
  std::ostringstream log;
  const auto res = run_unlearn(load_recipe(p, {}), log);
  // Counts recorded by the run: halves of 2 and 2, retain whole in both.
  EXPECT_TRUE(res.selection_split);
  EXPECT_EQ(res.in_run_docs.at("forget"), 2);
  EXPECT_EQ(res.in_run_docs.at("holdout"), 2);
  EXPECT_EQ(res.final_docs.at("forget"), 2);
  EXPECT_EQ(res.final_docs.at("holdout"), 2);
  EXPECT_EQ(res.in_run_docs.at("retain"), n_retain);
  EXPECT_EQ(res.final_docs.at("retain"), n_retain);
  EXPECT_EQ(res.mia.at("before").members.by_attack.at("loss").size(), 2u);
  EXPECT_EQ(res.mia.at("before").nonmembers.by_attack.at("loss").size(), 2u);
  // The values: the step-0 curve point is the original model on the selection half, the
  // final "before" the same model on the report half, and the two differ.
  const fs::path model = dir_ / "model";
  for (const auto& [split, h] : {std::pair{"forget", &hf}, std::pair{"holdout", &hh}}) {
    SCOPED_TRACE(split);
    const double sel = original_nll(model, dir_ / (std::string(split) + ".h5"), &h->selection);
    const double rep = original_nll(model, dir_ / (std::string(split) + ".h5"), &h->report);
    EXPECT_NEAR(res.evals.front().splits.at(split).nll, sel, 1e-6);
    EXPECT_NEAR(res.final_evals.at("before").splits.at(split).nll, rep, 1e-6);
    EXPECT_GT(std::abs(sel - rep), 1e-4) << "the halves must be told apart";
  }
  // The report says which half it describes and how many documents each half holds.
  std::ifstream in(dir_ / "out_halves" / "report.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("selection_split").at("enabled"), true);
  EXPECT_EQ(j.at("selection_split").at("forget").at("selection_documents"), 2);
  EXPECT_EQ(j.at("selection_split").at("forget").at("report_documents"), 2);
  EXPECT_EQ(j.at("selection_split").at("holdout").at("report_documents"), 2);
  EXPECT_EQ(j.at("in_run_eval").at("documents").at("forget"), 2);
  EXPECT_EQ(j.at("final_eval").at("documents").at("holdout"), 2);
  EXPECT_EQ(j.at("final_eval").at("documents").at("retain"), n_retain);
  EXPECT_EQ(j.at("mia_documents").at("half"), "report");
  EXPECT_EQ(j.at("mia_documents").at("members"), 2);
  EXPECT_EQ(j.at("data").at("forget").at("documents"), 4) << "the data entry still counts the whole file";
  std::ifstream md_in(dir_ / "out_halves" / "report.md");
  const std::string md((std::istreambuf_iterator<char>(md_in)), {});
  EXPECT_NE(md.find("**report half** of their documents: 2 forget and 2 holdout documents"), std::string::npos) << md;

  // Off: both read all four documents, the old behaviour.
  std::ostringstream log_off;
  const auto off = run_unlearn(
      load_recipe(p, {"eval.selection_split=false", "output.dir=" + (dir_ / "out_halves_off").string()}), log_off);
  EXPECT_FALSE(off.selection_split);
  EXPECT_EQ(off.in_run_docs.at("forget"), 4);
  EXPECT_EQ(off.final_docs.at("holdout"), 4);
  EXPECT_EQ(off.mia.at("before").members.by_attack.at("loss").size(), 4u);
  const double whole = original_nll(model, dir_ / "forget.h5", nullptr);
  EXPECT_NEAR(off.evals.front().splits.at("forget").nll, whole, 1e-6);
  EXPECT_NEAR(off.final_evals.at("before").splits.at("forget").nll, whole, 1e-6);
  std::ifstream in_off(dir_ / "out_halves_off" / "report.json");
  const nlohmann::json jo = nlohmann::json::parse(in_off);
  EXPECT_EQ(jo.at("selection_split").at("enabled"), false);
  EXPECT_EQ(jo.at("mia_documents").at("half"), "all");
  EXPECT_EQ(jo.at("in_run_eval").at("documents").at("forget"), 4);
}

// Training lines of metrics.jsonl without the timing fields, which differ between runs.
std::vector<nlohmann::json> step_lines(const fs::path& metrics) {
  std::vector<nlohmann::json> v;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("tokens_per_s");
    j.erase("mfu");
    v.push_back(j);
  }
  return v;
}

// A run paused (or killed) after its last checkpoint and resumed with train.resume=true
// ends exactly where the uninterrupted run ends: same losses at every step, same
// evaluations, same final weights.
TEST_F(Unlearn, ResumeIsBitExact) {
  const std::string p = recipe("resume", "  f: {type: nll, stream: forget, weight: -1}\n"
                                         "  r: {type: kl, stream: retain, weight: 1}\n",
                               1e-3, 12);
  std::ostringstream log_a, log_b;
  const auto a = run_unlearn(load_recipe(p, {"output.dir=" + (dir_ / "resume_a").string(), "eval.every=5", "output.checkpoint_every=4"}), log_a);
  const std::vector<std::string> ov = {"output.dir=" + (dir_ / "resume_b").string(), "eval.every=5", "output.checkpoint_every=4"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), ov.begin(), ov.end());
    return extra;
  };
  const auto paused = run_unlearn(load_recipe(p, with({"train.run_steps=7"})), log_b);
  EXPECT_EQ(paused.stop_reason, "paused");
  EXPECT_EQ(paused.steps_run, 7);
  EXPECT_FALSE(fs::exists(dir_ / "resume_b" / "final"));
  EXPECT_TRUE(fs::exists(dir_ / "resume_b" / "checkpoints" / "step_00000007" / "COMPLETE"));
  EXPECT_FALSE(fs::exists(dir_ / "resume_b" / "checkpoints" / "step_00000004")) << "keep_last defaults to 1";
  // What a kill after the checkpoint leaves behind: a later line and a torn one.
  std::ofstream(dir_ / "resume_b" / "metrics.jsonl", std::ios::app) << "{\"step\": 8, \"loss\": 0}\n{\"ste";

  // Without resume, the directory is refused and nothing is touched.
  try {
    std::ostringstream log;
    run_unlearn(load_recipe(p, ov), log);
    FAIL() << "a non-empty output.dir was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.resume=true"), std::string::npos) << e.what();
  }
  // A different recipe cannot continue this run.
  try {
    std::ostringstream log;
    run_unlearn(load_recipe(p, with({"train.resume=true", "optimizer.lr=2e-3"})), log);
    FAIL() << "a different recipe resumed the run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds a different run"), std::string::npos) << e.what();
  }

  // Nor can a run whose in-run evaluations read other documents.
  try {
    std::ostringstream log;
    run_unlearn(load_recipe(p, with({"train.resume=true", "eval.selection_split=false"})), log);
    FAIL() << "a run without the selection split resumed one with it";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("its 'eval' differs"), std::string::npos) << e.what();
  }

  const auto b = run_unlearn(load_recipe(p, with({"train.resume=true"})), log_b);
  EXPECT_NE(log_b.str().find("resumed from"), std::string::npos) << log_b.str();
  EXPECT_EQ(b.steps_run, 12);
  EXPECT_EQ(step_lines(dir_ / "resume_a" / "metrics.jsonl"), step_lines(dir_ / "resume_b" / "metrics.jsonl"));
  ASSERT_EQ(a.evals.size(), b.evals.size());
  for (size_t i = 0; i < a.evals.size(); ++i)
    EXPECT_EQ(a.evals[i].splits.at("forget").nll, b.evals[i].splits.at("forget").nll) << "eval " << i;
  auto final_sha = [&](const char* run) {
    std::ifstream in(dir_ / run / "report.json");
    return nlohmann::json::parse(in).at("unlearned_sha256").get<std::string>();
  };
  EXPECT_EQ(final_sha("resume_a"), final_sha("resume_b"));
}

TEST_F(Unlearn, BadRecipesAreClearErrors) {
  auto expect_error = [&](const std::string& p, const std::string& needle, std::vector<std::string> ov = {}) {
    try {
      std::ostringstream log;
      run_unlearn(load_recipe(p, ov), log);
      FAIL() << "expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(recipe("bad1", "  f: {type: gradient_magic, stream: forget, weight: -1}\n", 1e-3, 1),
               "unknown term type 'gradient_magic'");
  expect_error(recipe("bad2", "  f: {type: nll, stream: retain, weight: 1}\n", 1e-3, 1), "no term reads the forget stream");
  expect_error(recipe("bad3", "  f: {type: nll, stream: forget, weight: -1}\n  g: {type: nll, stream: general, weight: 1}\n",
                      1e-3, 1),
               "data.general is not set");
  expect_error(recipe("bad4", "  f: {type: nll, stream: forget, weight: -1, lambda: 2}\n", 1e-3, 1),
               "terms.f.lambda': unknown key");
  expect_error(recipe("bad5", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-3, 1), "missing.h5",
               {"data.forget=missing.h5"});
  expect_error(recipe("bad5b", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-3, 1),
               "eval.mc_tasks': must be a mapping of task name to JSONL file", {"eval.mc_tasks=austen_mc.jsonl"});
  // A missing task file is found before the first step (nothing is written).
  expect_error(recipe("bad5c", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-3, 1), "no_such_task.jsonl",
               {"eval.mc_tasks.qa=no_such_task.jsonl"});
  EXPECT_FALSE(fs::exists(dir_ / "out_bad5c" / "final"));
  // A forget set tokenised with another tokenizer than the rest.
  TokenDataset other = docs({"abc def", "ghi jkl"});
  other.tokenizer = "hf:0123456789abcdef";
  save_token_dataset((dir_ / "other.h5").string(), other);
  expect_error(recipe("bad6", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-3, 1), "differs from the forget set",
               {"data.holdout=other.h5"});
  // An empty forget set.
  save_token_dataset((dir_ / "empty.h5").string(), docs({}));
  expect_error(recipe("bad7", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-3, 1), "the forget set is empty",
               {"data.forget=empty.h5"});
  // One holdout document cannot be split into a selection and a report half.
  save_token_dataset((dir_ / "one.h5").string(), docs({"SECRET-MARKER-" + letters(900, 120)}));
  expect_error(recipe("bad8", "  f: {type: nll, stream: forget, weight: -1}\n", 1e-3, 1),
               "eval.selection_split: the holdout set", {"data.holdout=one.h5"});
}

}  // namespace
}  // namespace lethe
