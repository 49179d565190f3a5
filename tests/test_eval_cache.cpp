// eval.cache (engine/unlearn/eval_cache.h): an entry round-trips every number exactly, its
// key moves with each input that decides the scores and with none of the training
// settings, and what JSON cannot carry is refused rather than stored wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unistd.h>

#include "engine/unlearn/eval_cache.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

class EvalCache : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lethe_eval_cache_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "task.jsonl") << "{\"q\": 1}\n";
    r_.seq_len = 64;
    r_.mc_task = (dir_ / "task.jsonl").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  json key(const Recipe& r, const std::string& role = "oracle", const std::string& model = "m1",
           Precision prec = Precision::f32, const std::string& exe = "x1") const {
    return fixed_eval_key(r, role, model, "bytes", {{"forget", "f1"}, {"holdout", "h1"}}, {{"forget", "rf"}},
                          {{"forget", "sf"}}, prec, Device::cpu, exe);
  }
  static FixedModelEval sample() {
    FixedModelEval e;
    e.final_eval.step = -1;
    e.final_eval.mia_auc = 0.1 + 0.2;  // not a short decimal: the round trip must be exact
    e.final_eval.splits["forget"] = {std::acos(-1.0), std::exp(std::acos(-1.0)), 1.0 / 3, 12345};
    e.in_run = e.final_eval;
    e.in_run->step = -1;
    e.mia.members.by_attack["loss"] = {-1.0 / 7, 2.0 / 3, 1e-300};
    e.mia.nonmembers.by_attack["min_k_pp_20"] = {5e-324, -0.0};
    e.extra.verbatim = true;
    e.extra.rouge_l_f1 = 0.123456789012345678;
    e.extra.mc_truth_ratios = {0.5, 1.0 / 9};
    e.extra.canaries["forget"] = {2.5, 19.93, 3, {1.0 / 11, 7.25}};
    return e;
  }
  fs::path dir_;
  Recipe r_;
};

TEST_F(EvalCache, EntryRoundTripsEveryNumberExactly) {
  const FixedModelEval e = sample();
  const json k = key(r_);
  std::string why;
  ASSERT_TRUE(save_fixed_eval(dir_.string(), k, e, &why)) << why;
  const std::optional<FixedModelEval> back = load_fixed_eval(dir_.string(), k, &why);
  ASSERT_TRUE(back.has_value()) << why;
  EXPECT_EQ(fixed_eval_to_json(*back), fixed_eval_to_json(e));
  EXPECT_EQ(back->final_eval.splits.at("forget").nll, std::acos(-1.0));
  EXPECT_EQ(back->mia.nonmembers.by_attack.at("min_k_pp_20")[0], 5e-324);
  EXPECT_EQ(back->extra.canaries.at("forget").exposures[0], 1.0 / 11);
  // Nothing but the entry is left behind (the temporary file was renamed).
  int files = 0;
  for (const auto& f : fs::directory_iterator(dir_)) files += f.path().extension() == ".json" && f.path().filename() != "task.jsonl";
  EXPECT_EQ(files, 1);
}

TEST_F(EvalCache, KeyFollowsWhatDecidesTheScoresAndNothingElse) {
  const json k0 = key(r_);
  Recipe training = r_;  // training settings: the fixed models' numbers do not depend on them
  training.steps = 999;
  training.schedule.lr = 0.5;
  training.batch_size = 64;  // the evaluation's batch stays 8
  training.seed = 77;  // no canaries: the seed decides nothing the cache holds
  training.out_dir = "elsewhere";
  training.stop_retain_ratio = 1.5;
  training.terms.push_back({});
  EXPECT_EQ(key(training), k0);
  auto differs = [&](const json& k, const char* what) { EXPECT_NE(fixed_eval_path("c", k), fixed_eval_path("c", k0)) << what; };
  differs(key(r_, "original"), "role");
  differs(key(r_, "oracle", "m2"), "weights");
  differs(key(r_, "oracle", "m1", Precision::bf16), "precision");
  differs(key(r_, "oracle", "m1", Precision::f32, "x2"), "executable");
  auto with = [&](auto change, const char* what) {
    Recipe r = r_;
    change(r);
    differs(key(r), what);
  };
  with([](Recipe& r) { r.seq_len = 32; }, "seq_len");
  with([](Recipe& r) { r.mia_max_tokens = 2048; }, "mia_max_tokens");
  with([](Recipe& r) { r.mia_max_docs = 3; }, "mia_max_docs");
  with([](Recipe& r) { r.eval_final_max_sequences = 10; }, "final_max_sequences");
  with([](Recipe& r) { r.eval_max_sequences = 10; }, "max_sequences (the oracle's in-run evaluation)");
  with([](Recipe& r) { r.eval_selection_split = false; }, "selection_split");
  with([](Recipe& r) { r.verbatim_prefix = r.verbatim_continuation = 8; }, "verbatim");
  // Under 8 rows per rank a step's rows are the evaluation's batch (eval_batch).
  with([](Recipe& r) { r.batch_size = 3; }, "the evaluation's batch");
  with([](Recipe& r) { r.parallel.dp = 2; }, "the evaluation's batch (4 rows per dp rank)");
  // The task file's contents, not its name.
  std::ofstream(dir_ / "task.jsonl", std::ios::app) << "{\"q\": 2}\n";
  differs(key(r_), "task contents");
  // With canaries, their samples follow train.seed.
  std::ofstream(dir_ / "can.jsonl") << "{}\n";
  Recipe c1 = r_, c2 = r_;
  c1.canaries = c2.canaries = {{"forget", (dir_ / "can.jsonl").string()}};
  c2.seed = 2;
  EXPECT_NE(key(c1), key(c2));
  // The original's entry does not depend on the in-run sample (its in-run evaluation is the run's own).
  Recipe m = r_;
  m.eval_max_sequences = 10;
  EXPECT_EQ(key(m, "original"), key(r_, "original"));
}

TEST_F(EvalCache, NonFiniteNumbersAndForeignEntriesAreNotServed) {
  FixedModelEval e = sample();
  e.mia.members.by_attack["loss"][1] = std::numeric_limits<double>::infinity();
  std::string why;
  EXPECT_FALSE(save_fixed_eval(dir_.string(), key(r_), e, &why));
  EXPECT_NE(why.find("non-finite"), std::string::npos) << why;
  EXPECT_FALSE(load_fixed_eval(dir_.string(), key(r_), &why).has_value());
  EXPECT_EQ(why, "no entry");
  // An entry stored under one key, found under another's file name, is not served.
  ASSERT_TRUE(save_fixed_eval(dir_.string(), key(r_), sample(), &why)) << why;
  Recipe other = r_;
  other.seq_len = 32;
  fs::rename(fixed_eval_path(dir_.string(), key(r_)), fixed_eval_path(dir_.string(), key(other)));
  EXPECT_FALSE(load_fixed_eval(dir_.string(), key(other), &why).has_value());
  EXPECT_NE(why.find("holds another key"), std::string::npos) << why;
  // An oracle entry without its in-run evaluation is incomplete.
  FixedModelEval no_in_run = sample();
  no_in_run.in_run.reset();
  ASSERT_TRUE(save_fixed_eval(dir_.string(), key(r_), no_in_run, &why)) << why;
  EXPECT_FALSE(load_fixed_eval(dir_.string(), key(r_), &why).has_value());
  EXPECT_NE(why.find("no in-run evaluation"), std::string::npos) << why;
  EXPECT_FALSE(executable_sha256().empty()) << "/proc/self/exe is readable on Linux";
}

}  // namespace
}  // namespace lethe
