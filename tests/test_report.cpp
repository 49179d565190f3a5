// The unlearning report (engine/unlearn/report.h) from a hand-made result: report.md leads
// with the verdict, report.json carries both PrivLeak conventions with intervals and the
// whole-split NLLs, curves.svg draws the oracle's levels as target lines and gives the
// AUC its own axis.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "engine/eval/ks_test.h"
#include "engine/unlearn/report.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

EvalPoint point(int64_t step, double forget, double retain, double auc) {
  EvalPoint e;
  e.step = step;
  e.splits["forget"].nll = forget;
  e.splits["retain"].nll = retain;
  e.splits["holdout"].nll = 1.2;
  e.mia_auc = auc;
  return e;
}

MiaSuite suite(double shift) {
  MiaSuite s;
  for (int i = 0; i < 20; ++i) {
    const double m = 0.05 * i + shift, n = 0.05 * i + 0.025;
    for (const char* a : {"loss", "min_k_40"}) {
      s.members.by_attack[a].push_back(m);
      s.nonmembers.by_attack[a].push_back(n);
    }
  }
  return s;
}

TEST(Report, LeadsWithTheVerdictAndDrawsTheOracleAsTargets) {
  const fs::path dir = fs::temp_directory_path() / ("lethe_report_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  Recipe r;
  r.method = "ga_gd";
  r.file = "ga_gd.yaml";
  r.eval_max_sequences = 96;
  UnlearnResult res;
  res.evals = {point(0, 1.0, 1.1, 0.8), point(10, 1.3, 1.12, 0.6)};
  res.steps_run = 10;
  res.stop_reason = "max steps";
  res.final_evals["before"] = point(0, 1.01, 1.10, 0.8);
  res.final_evals["after"] = point(10, 1.31, 1.111, 0.6);
  res.final_evals["oracle"] = point(-1, 1.25, 1.09, 0.5);
  res.final_evals["oracle_in_run"] = point(-1, 1.24, 1.08, 0.5);
  res.mia["before"] = suite(0.5);
  res.mia["after"] = suite(0.0);  // scores the same documents as the oracle does
  res.mia["oracle"] = suite(0.0);
  res.mia_auc_after = {{"loss", 0.5}, {"min_k_40", 0.5}};
  res.mia_auc_oracle = res.mia_auc_after;
  // Forget QA: the original prefers the truth (R < 1), the oracle cannot tell (R near 1).
  for (const char* who : {"before", "after", "oracle"}) {
    ExtraMetrics& x = res.extra[who];
    x.mc = true;
    x.mc_items = 10;
    for (int i = 0; i < 10; ++i)
      x.mc_truth_ratios.push_back(std::string(who) == "before" ? 0.1 + 0.01 * i : 0.8 + 0.05 * i);
  }
  res.extra["after"].mc_truth_ratios[0] = 0.2;  // one item still known
  ReportInput in;
  in.recipe = &r;
  in.result = &res;
  write_report(in, dir.string());

  const std::string md = slurp(dir / "report.md");
  EXPECT_EQ(md.find("**Verdict against the retrain oracle: target met**"), md.find('\n') + 2) << md;
  EXPECT_NE(md.find("| forget quality (KS p-value vs the oracle): multiple choice |"), std::string::npos) << md;
  EXPECT_NE(md.find("NLL over whole splits"), std::string::npos) << md;
  EXPECT_NE(md.find("the first 96 chunks"), std::string::npos) << md;

  const nlohmann::json j = nlohmann::json::parse(slurp(dir / "report.json"));
  // Identical scores for the unlearned model and the oracle: PrivLeak 0 on every paired resample.
  EXPECT_EQ(j["privleak"]["after"]["muse_min_k_40"]["value"].get<double>(), 0.0);
  EXPECT_EQ(j["privleak"]["after"]["muse_min_k_40"]["ci95"][1].get<double>(), 0.0);
  EXPECT_GT(j["privleak"]["before"]["relative_auc_loss"]["value"].get<double>(), 0.0);
  EXPECT_LT(j["privleak"]["before"]["muse_min_k_40"]["value"].get<double>(), 0.0);
  EXPECT_NEAR(j["verdict"]["retain_nll_change_vs_original_percent"].get<double>(), 1.0, 1e-9);
  EXPECT_TRUE(j["verdict"]["met"].get<bool>());
  EXPECT_DOUBLE_EQ(j["after"]["forget"]["nll"].get<double>(), 1.31);  // the whole-split evaluation
  EXPECT_TRUE(j["mia"]["after"]["loss"].contains("tpr_at_1_fpr"));
  // Forget quality: the KS p-value of each model's truth ratios against the oracle's.
  const auto& mc = j["multiple_choice"];
  for (const char* who : {"before", "after"}) {
    const KsResult ks = ks_two_sample(res.extra[who].mc_truth_ratios, res.extra["oracle"].mc_truth_ratios);
    EXPECT_DOUBLE_EQ(mc[who]["forget_quality"]["p_value"].get<double>(), ks.p_value) << who;
    EXPECT_DOUBLE_EQ(mc[who]["forget_quality"]["ks_statistic"].get<double>(), ks.statistic) << who;
  }
  EXPECT_LT(mc["before"]["forget_quality"]["p_value"].get<double>(), 1e-4);  // fully separated: 2 / C(20, 10)
  EXPECT_GT(mc["after"]["forget_quality"]["p_value"].get<double>(), 0.9);
  EXPECT_FALSE(mc["oracle"].contains("forget_quality"));
  EXPECT_NEAR(mc["before"]["truth_ratio"]["true_better"].get<double>(), 1 - 0.145, 1e-12);

  const std::string svg = slurp(dir / "curves.svg");
  size_t dashed = 0;
  for (size_t at = 0; (at = svg.find("stroke-dasharray='6,4'", at)) != std::string::npos; ++at) ++dashed;
  EXPECT_EQ(dashed, 4u) << "one target line per split drawn (3) and one for the AUC";
  EXPECT_NE(svg.find("right axis"), std::string::npos);
  fs::remove_all(dir);
}

// The NLL half of the verdict is one-sided (utility kept: at most 2% above the original),
// since an exact retrain moves retain NLL itself; the symmetric reading and the oracle's own
// change are reported beside it.
TEST(Report, VerdictReadsUtilityOneSidedAndShowsBothReadings) {
  const fs::path dir = fs::temp_directory_path() / ("lethe_report_verdict_" + std::to_string(::getpid()));
  Recipe r;
  r.method = "wga_gd";
  r.file = "wga_gd.yaml";
  auto verdict = [&](double retain_after) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    UnlearnResult res;
    res.evals = {point(0, 1.0, 1.1, 0.8), point(10, 1.3, 1.12, 0.6)};
    res.steps_run = 10;
    res.stop_reason = "max steps";
    res.final_evals["before"] = point(0, 1.01, 1.0, 0.8);
    res.final_evals["after"] = point(10, 1.31, retain_after, 0.6);
    res.final_evals["oracle"] = point(-1, 1.25, 0.86, 0.5);
    res.mia["before"] = suite(0.5);
    res.mia["after"] = suite(0.0);
    res.mia["oracle"] = suite(0.0);
    ReportInput in;
    in.recipe = &r;
    in.result = &res;
    write_report(in, dir.string());
    return std::pair{nlohmann::json::parse(slurp(dir / "report.json"))["verdict"], slurp(dir / "report.md")};
  };
  const auto [fell, fell_md] = verdict(0.75);  // 25% below the original, as descent on retain does
  EXPECT_TRUE(fell["met"].get<bool>()) << fell.dump();
  EXPECT_FALSE(fell["nll_within_2_percent_both_ways"].get<bool>());
  EXPECT_NEAR(fell["retain_nll_change_vs_original_percent"].get<double>(), -25.0, 1e-9);
  EXPECT_NEAR(fell["oracle_retain_nll_change_vs_original_percent"].get<double>(), -14.0, 1e-9);
  EXPECT_NE(fell_md.find("retain NLL vs the original: -25.0000% (the oracle: -14.0000%)"), std::string::npos) << fell_md;
  const auto [rose, rose_md] = verdict(1.021);  // 2.1% above: utility lost
  EXPECT_FALSE(rose["met"].get<bool>()) << rose.dump();
  EXPECT_NE(rose_md.find("target not met"), std::string::npos) << rose_md;
  const auto [kept, kept_md] = verdict(1.019);
  EXPECT_TRUE(kept["met"].get<bool>()) << kept.dump();
  EXPECT_TRUE(kept["nll_within_2_percent_both_ways"].get<bool>());
  fs::remove_all(dir);
}

// The report says which half of the forget and holdout documents its numbers describe and
// how many each half holds, or, with the split off, that selection read the same documents.
TEST(Report, NamesTheHalfItReportsOn) {
  const fs::path dir = fs::temp_directory_path() / ("lethe_report_halves_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  Recipe r;
  r.method = "ga";
  r.file = "ga.yaml";
  UnlearnResult res;
  res.evals = {point(0, 1.0, 1.1, 0.8), point(10, 1.3, 1.12, 0.6)};
  res.steps_run = 10;
  res.stop_reason = "max steps";
  res.final_evals["before"] = point(0, 1.01, 1.10, 0.8);
  res.final_evals["after"] = point(10, 1.31, 1.111, 0.6);
  res.mia["before"] = suite(0.5);
  res.mia["after"] = suite(0.0);
  res.mia_auc_after = {{"loss", 0.5}, {"min_k_40", 0.5}};
  res.selection_split = true;
  res.in_run_docs = {{"forget", 13}, {"holdout", 12}, {"retain", 108}};
  res.final_docs = {{"forget", 14}, {"holdout", 13}, {"retain", 108}};
  ReportInput in;
  in.recipe = &r;
  in.result = &res;
  write_report(in, dir.string());
  nlohmann::json j = nlohmann::json::parse(slurp(dir / "report.json"));
  EXPECT_EQ(j["selection_split"]["enabled"], true);
  EXPECT_EQ(j["selection_split"]["forget"]["selection_documents"], 13);
  EXPECT_EQ(j["selection_split"]["forget"]["report_documents"], 14);
  EXPECT_EQ(j["selection_split"]["holdout"]["selection_documents"], 12);
  EXPECT_EQ(j["selection_split"]["holdout"]["report_documents"], 13);
  EXPECT_EQ(j["in_run_eval"]["documents"]["holdout"], 12);
  EXPECT_EQ(j["final_eval"]["documents"]["forget"], 14);
  EXPECT_EQ(j["final_eval"]["documents"]["retain"], 108);
  EXPECT_EQ(j["mia_documents"]["half"], "report");
  EXPECT_EQ(j["mia_documents"]["members"], 20);
  std::string md = slurp(dir / "report.md");
  EXPECT_NE(md.find("**report half** of their documents: 14 forget and 13 holdout documents"), std::string::npos) << md;
  EXPECT_NE(md.find("used the other half (13 forget, 12 holdout documents)"), std::string::npos) << md;

  res.selection_split = false;
  res.in_run_docs = res.final_docs = {{"forget", 27}, {"holdout", 25}, {"retain", 108}};
  write_report(in, dir.string());
  j = nlohmann::json::parse(slurp(dir / "report.json"));
  EXPECT_EQ(j["selection_split"]["enabled"], false);
  EXPECT_FALSE(j["selection_split"].contains("forget"));
  EXPECT_EQ(j["mia_documents"]["half"], "all");
  EXPECT_EQ(j["in_run_eval"]["documents"]["forget"], 27);
  md = slurp(dir / "report.md");
  EXPECT_NE(md.find("Selection split off (`eval.selection_split: false`)"), std::string::npos) << md;
  EXPECT_EQ(md.find("report half"), std::string::npos) << md;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lethe
