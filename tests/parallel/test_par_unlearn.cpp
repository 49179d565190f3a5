// `lethe unlearn` on a process grid against one process. The Reference test (a plain
// process, a ctest fixture) pretrains a tiny byte-level model briefly, writes the data and
// two recipes, GA+KL (ascent on forget + KL to the original on retain) and GA+GD (ascent
// on forget + descent on retain, with greedy verbatim decoding and multiple choice), and
// records their one-process per-step losses and evaluations. The others run under mpirun:
//   Layouts        every recipe at tp=2 and dp=2 (two ranks) and tp=2 x dp=2 (four): per-step loss and every
//                  term's loss within 1e-5 relative (or 1.3e-6 absolute, see kTermAbsFloor), before/after NLL of every split within
//                  1e-5 relative, the final MIA AUCs, ROUGE-L and MC accuracy equal; the final
//                  checkpoint loads in one process and gives the reported forget NLL
//   EveryTermTp2Dp2  npo, simnpo, random_labels, adversarial and rmu (with train.trainable)
//                  at tp=2 x dp=2: per-step losses and split NLLs within 1e-5 relative;
//                  GA+KL with train.grad_accum=2 and parallel.zero1=false the same way
//   ResumeTp2Dp2   GA+KL paused after 2 of 4 steps (train.run_steps) and resumed at tp=2 x
//                  dp=2: the same per-step losses as the uninterrupted run (1e-12 relative)
//   ResumeOne      a second run paused at tp=2 x dp=2, continued by one process: the
//                  one-process losses and evaluations within 1e-5 relative
//   DeviceLayouts  both recipes at dp=2 and at tp=2 on the host-staged device against the
//                  CPU emulation of bf16 at the same layout: the same report and metrics, bit
//                  for bit
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/cli/commands.h"
#include "engine/core/rng.h"
#include "engine/data/token_dataset.h"
#include "engine/eval/nll.h"
#include "engine/io/checkpoint.h"
#include "engine/io/model_checkpoint.h"
#include "engine/model/llama.h"
#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"
#include "par_test_util.h"
#include "tests/run_files.h"
#include "tests/unlearn_data.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

// Under the test's working directory (the build tree), shared by the fixture chain.
const fs::path kDir = fs::absolute("par_unlearn");
const std::vector<std::string> kRecipes{"ga_kl", "ga_gd"};
// One recipe per remaining term type (with nll on retain beside it), 2 steps each.
const std::vector<std::string> kTermTypes{"npo",  "simnpo", "random_labels", "adversarial", "rmu",
                                          "wga",  "flood",  "undial"};

using test::docs;
using test::letters;

std::string recipe_path(const std::string& name) { return (kDir / (name + ".yaml")).string(); }

// Runs a recipe into a fresh output directory (removed by rank 0 first).
UnlearnResult run(const std::string& name, const std::string& out, std::vector<std::string> extra,
                  bool fresh = true) {
  auto& w = *test::mpi_world_shared();
  if (fresh && w.rank() == 0) fs::remove_all(kDir / out);
  w.barrier();
  extra.push_back("output.dir=" + (kDir / out).string());
  std::ostringstream log;
  return run_unlearn(load_recipe(recipe_path(name), extra), log);
}

// Per step: the total loss and every term's, from metrics.jsonl (rank 0 writes it).
json step_losses(const std::string& out) {
  std::ifstream in(kDir / out / "metrics.jsonl");
  json steps = json::array();
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j.contains("eval")) continue;
    steps.push_back({{"loss", j.at("loss")}, {"terms", j.at("terms")}});
  }
  return steps;
}

json summary(const UnlearnResult& res, const std::string& out) {
  json evals = json::array();
  for (const auto& e : res.evals) {
    json s, acc, tokens;
    for (const auto& [n, m] : e.splits) {
      s[n] = m.nll;
      acc[n] = m.acc;
      tokens[n] = m.tokens;
    }
    evals.push_back({{"step", e.step}, {"nll", s}, {"acc", acc}, {"tokens", tokens}, {"mia_auc", e.mia_auc}});
  }
  const ExtraMetrics& after = res.extra.at("after");
  return {{"steps", step_losses(out)},
          {"evals", evals},
          {"mia_auc", res.mia_auc_after},
          {"rouge_l_f1", after.rouge_l_f1},
          {"mc_acc", after.mc_acc},
          {"mc_truth_ratios", after.mc_truth_ratios},
          {"canary_bits", after.canaries.count("c") ? json(after.canaries.at("c").exposures) : json::array()}};
}

void expect_rel(double got, double want, double rel, const std::string& what, double abs_floor = 0) {
  EXPECT_NEAR(got, want, std::max(rel * std::abs(want), std::max(abs_floor, 1e-30))) << what;
}

// A term's value is a mean over tokens of per-token log-probabilities (NLL) or of their
// differences (KL to the reference, NPO's log-ratio). Under tp the log-softmax is reduced
// over vocabulary shards in another order, so each per-token log-prob carries an absolute
// rounding error of a few u * |log p| (u = 2^-24, |log p| <= ln V for a near-uniform
// model, ln 256 = 5.5 here). A term that is a small difference of such log-probs (a KL of
// 1e-3) is not known to 1e-5 of itself, only to that absolute level: measured 2e-8 on a
// KL of 1.1e-3 (1.75e-5 relative). The floor, 4 u ln V = 1.3e-6, is the per-token bound.
const double kTermAbsFloor = 4 * 0x1p-24 * std::log(256.0);

void expect_same_run(const json& got, const json& want, const std::string& label) {
  ASSERT_EQ(got["steps"].size(), want["steps"].size()) << label;
  for (size_t i = 0; i < want["steps"].size(); ++i) {
    const std::string at = label + " step " + std::to_string(i + 1);
    expect_rel(got["steps"][i]["loss"], want["steps"][i]["loss"], 1e-5, at);
    for (auto it = want["steps"][i]["terms"].begin(); it != want["steps"][i]["terms"].end(); ++it)
      expect_rel(got["steps"][i]["terms"][it.key()], it.value(), 1e-5, at + " " + it.key(), kTermAbsFloor);
  }
  ASSERT_EQ(got["evals"].size(), want["evals"].size()) << label;
  // Evaluation is split over dp ranks and summed: the same tokens, argmax hits and
  // per-sequence scores (hence the in-run AUC) as one process.
  for (size_t i = 0; i < want["evals"].size(); ++i) {
    const std::string at = label + " eval " + std::to_string(i);
    for (auto it = want["evals"][i]["nll"].begin(); it != want["evals"][i]["nll"].end(); ++it) {
      expect_rel(got["evals"][i]["nll"][it.key()], it.value(), 1e-5, at + " " + it.key());
      EXPECT_EQ(got["evals"][i]["tokens"][it.key()], want["evals"][i]["tokens"][it.key()]) << at << " " << it.key();
      EXPECT_NEAR(got["evals"][i]["acc"][it.key()].get<double>(), want["evals"][i]["acc"][it.key()].get<double>(), 1e-9)
          << at << " " << it.key();
    }
    EXPECT_NEAR(got["evals"][i]["mia_auc"].get<double>(), want["evals"][i]["mia_auc"].get<double>(), 1e-9) << at;
  }
  // Rank statistics over a few documents and greedy tokens: equal unless a near-tie flips.
  for (auto it = want["mia_auc"].begin(); it != want["mia_auc"].end(); ++it)
    EXPECT_NEAR(got["mia_auc"][it.key()].get<double>(), it.value().get<double>(), 1e-9) << label << " " << it.key();
  EXPECT_NEAR(got["rouge_l_f1"].get<double>(), want["rouge_l_f1"].get<double>(), 1e-9) << label;
  EXPECT_NEAR(got["mc_acc"].get<double>(), want["mc_acc"].get<double>(), 1e-9) << label;
  // A truth ratio is exp of a difference of two per-token mean log-probs, each off by at
  // most kTermAbsFloor: relative 2 kTermAbsFloor, doubled for exp's curvature and margin.
  ASSERT_EQ(got["mc_truth_ratios"].size(), want["mc_truth_ratios"].size()) << label;
  for (size_t i = 0; i < want["mc_truth_ratios"].size(); ++i)
    expect_rel(got["mc_truth_ratios"][i], want["mc_truth_ratios"][i], 4 * kTermAbsFloor,
               label + " truth ratio " + std::to_string(i));
  // Exact ranks among 64 candidates: equal unless a near-tie flips.
  EXPECT_EQ(got["canary_bits"], want["canary_bits"]) << label;
}

std::vector<std::string> term_args(const std::string& type) {
  std::vector<std::string> a{"train.steps=2"};
  if (type == "rmu") a.push_back("train.trainable=layers.1.mlp.down_proj");
  return a;
}

json reference() {
  std::ifstream in(kDir / "reference.json");
  if (!in.good()) return {};
  return json::parse(in);
}

TEST(ParallelUnlearn, Reference) {
  fs::remove_all(kDir);
  fs::create_directories(kDir);
  std::vector<std::string> forget, holdout, retain;
  for (int i = 0; i < 4; ++i) forget.push_back("SECRET-MARKER-" + letters(uint64_t(i), 80));
  for (int i = 0; i < 4; ++i) holdout.push_back("SECRET-MARKER-" + letters(uint64_t(100 + i), 80));
  std::ifstream corpus(std::string(LETHE_SOURCE_DIR) + "/configs/demo/corpus.txt");
  for (std::string para, line; std::getline(corpus, line);) {
    if (line.empty()) {
      if (!para.empty()) retain.push_back(para);
      para.clear();
    } else {
      para += line + "\n";
    }
  }
  // Canaries over a small space (4^3 candidates), so every layout ranks them exactly: the
  // cache path on one process and tp = 1 grids, the row path under tp.
  {
    std::ofstream can(kDir / "canaries.jsonl");
    for (int i = 0; i < 4; ++i)
      can << json{{"prefix", forget[size_t(i)].substr(0, 20)}, {"secret", "abd"}, {"alphabet", "abcd"}}.dump() << "\n";
  }
  save_token_dataset((kDir / "forget.h5").string(), docs(forget));
  save_token_dataset((kDir / "holdout.h5").string(), docs(holdout));
  save_token_dataset((kDir / "retain.h5").string(), docs(retain));
  std::ofstream(kDir / "train.yaml") << "model: " << LETHE_SOURCE_DIR << "/configs/models/tiny.yaml\n"
                                     << "data: {path: [forget.h5, retain.h5], min_targets: 8}\n"
                                     << "train: {steps: 30, batch_size: 8, seq_len: 32, log_every: 1000, seed: 3}\n"
                                     << "optimizer: {lr: 3.0e-3, schedule: constant}\n"
                                     << "checkpoint: {dir: model}\n";
  std::ostringstream log;
  cli::run_train((kDir / "train.yaml").string(), {}, log);
  const std::string common =
      "model: model\n"
      "data: {forget: forget.h5, retain: retain.h5, holdout: holdout.h5, seq_len: 32, min_targets: 8}\n"
      "train: {steps: 4, batch_size: 4, log_every: 100, seed: 1}\n"
      "optimizer: {type: adamw, lr: 1.0e-3, schedule: constant, grad_clip: 1.0}\n";
  std::ofstream(recipe_path("ga_kl")) << "method: ga_kl\n" << common
                                      << "terms:\n  f: {type: nll, stream: forget, weight: -1}\n"
                                         "  r: {type: kl, stream: retain, weight: 1}\n"
                                         "eval: {every: 2, max_sequences: 0}\n";
  std::ofstream(recipe_path("ga_gd")) << "method: ga_gd\n" << common
                                      << "terms:\n  f: {type: nll, stream: forget, weight: -1}\n"
                                         "  r: {type: nll, stream: retain, weight: 1}\n"
                                      << "eval: {every: 2, max_sequences: 0, verbatim_prefix: 8, "
                                         "verbatim_continuation: 8, verbatim_max_docs: 2, mc_task: "
                                      << LETHE_SOURCE_DIR << "/data/tasks/austen_mc.jsonl, canaries: {c: "
                                      << (kDir / "canaries.jsonl").string() << "}}\n";
  for (const auto& type : kTermTypes) {
    std::ofstream f(recipe_path(type));
    f << "method: " << type << "\n" << common << "eval: {every: 0, max_sequences: 0}\nterms:\n";
    if (type == "rmu")
      f << "  f: {type: rmu_forget, stream: forget, weight: 1, layer: 1, seed: 2}\n"
           "  r: {type: rmu_retain, stream: retain, weight: 1, layer: 1}\n";
    else
      // wga ascends (weight -1); flood's level sits above the forget NLL, so it ascends too.
      f << "  f: {type: " << type << ", stream: forget, weight: " << (type == "wga" ? "-1" : "1") << ", seed: 5"
        << (type == "flood" ? ", flood: 6.0" : "") << "}\n"
        << "  r: {type: nll, stream: retain, weight: 1}\n";
  }
  json ref;
  for (const auto& type : kTermTypes) {
    const UnlearnResult res = run(type, "ref_" + type, term_args(type));
    ref[type] = summary(res, "ref_" + type);
    ASSERT_EQ(ref[type]["steps"].size(), 2u) << type;
  }
  for (const auto& name : kRecipes) {
    const UnlearnResult res = run(name, "ref_" + name, {});
    ASSERT_EQ(res.steps_run, 4);
    ref[name] = summary(res, "ref_" + name);
    ASSERT_EQ(ref[name]["steps"].size(), 4u);
  }
  ref["ga_kl_accum"] = summary(run("ga_kl", "ref_ga_kl_accum", {"train.grad_accum=2"}), "ref_ga_kl_accum");
  std::ofstream(kDir / "reference.json") << ref.dump();

  // Layout errors are clear.
  auto expect_error = [&](std::vector<std::string> extra, const std::string& needle) {
    try {
      run("ga_kl", "bad", extra);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({"parallel.dp=3"}, "must be a multiple of parallel.dp");
  expect_error({"parallel.tp=0"}, "parallel.tp");
  expect_error({"parallel.pp=2"}, "pp");
  expect_error({"parallel.tp=2"}, "parallel.tp * parallel.dp");
}

TEST(ParallelUnlearn, Layouts) {
  auto& w = *test::mpi_world_shared();
  const json ref = reference();
  ASSERT_FALSE(ref.is_null()) << "run the Reference test first (ctest fixture)";
  for (const auto& [tp, dp] : test::layouts()) {
    // Four ranks: tp=2 x dp=2 only (two ranks cover tp=2 and dp=2 alone), to stay fast.
    if ((tp == 1 && dp == 1) || (w.size() == 4 && tp != 2)) continue;
    for (const auto& name : kRecipes) {
      const std::string out = name + "_tp" + std::to_string(tp) + "dp" + std::to_string(dp);
      const UnlearnResult res = run(name, out, {"parallel.tp=" + std::to_string(tp),
                                                "parallel.dp=" + std::to_string(dp), "output.export_hf=true"});
      EXPECT_EQ(res.steps_run, 4);
      if (w.rank() != 0) continue;
      EXPECT_TRUE(fs::exists(kDir / out / "hf" / "model.safetensors")) << out;
      expect_same_run(summary(res, out), ref[name], out);
      // The final checkpoint (one shard per rank) loads into one process.
      const Checkpoint ck = Checkpoint::open(res.final_dir);
      EXPECT_EQ(ck.manifest()["parallel"]["tp"], tp);
      EXPECT_EQ(ck.manifest()["shards"].size(), size_t(w.size()));
      LlamaModel one(llama_config_from_json(ck.manifest()["model"], res.final_dir), DType::f32);
      load_params(ck, "weights", one.params());
      // The in-run evaluation reads the selection half of the forget documents.
      const TokenDataset forget = load_token_dataset((kDir / "forget.h5").string(), 256);
      const TokenDataset half = subset_token_dataset(forget, split_documents_by_hash(forget).selection);
      const NllResult nll = evaluate_nll(one, half, 32, 8, 0);
      expect_rel(nll.mean_nll(), res.evals.back().splits.at("forget").nll, 1e-5, out + " final checkpoint");
    }
  }
}

// eval.cache under tp=2: the ranks agree on whether a model is cached, so a rank whose
// cache lacks the entry makes every rank score it (the evaluations are collective: a rank
// alone would hang the others), and a second run reads back the first run's numbers.
TEST(ParallelUnlearn, EvalCacheTp2) {
  auto& w = *test::mpi_world_shared();
  if (w.size() != 2) GTEST_SKIP() << "runs on two ranks";
  const fs::path cache = kDir / "eval_cache", empty = kDir / ("eval_cache_empty_" + std::to_string(w.rank()));
  if (w.rank() == 0) fs::remove_all(cache);
  fs::remove_all(empty);
  w.barrier();
  const std::vector<std::string> common = {"parallel.tp=2", "oracle=" + (kDir / "model").string()};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), common.begin(), common.end());
    return extra;
  };
  const UnlearnResult first = run("ga_gd", "cache_first", with({"eval.cache=" + cache.string()}));
  EXPECT_TRUE(first.cached.empty());
  // Rank 1 looks in an empty directory: nobody reads the cache.
  const UnlearnResult split =
      run("ga_gd", "cache_split", with({"eval.cache=" + (w.rank() == 0 ? cache : empty).string()}));
  EXPECT_TRUE(split.cached.empty()) << "rank " << w.rank();
  const UnlearnResult second = run("ga_gd", "cache_second", with({"eval.cache=" + cache.string()}));
  EXPECT_EQ(second.cached, (std::vector<std::string>{"original", "oracle"})) << "rank " << w.rank();
  if (w.rank() != 0) return;
  for (const UnlearnResult* r : {&split, &second})
    for (const char* who : {"before", "oracle"}) {
      EXPECT_EQ(r->final_evals.at(who).splits.at("forget").nll, first.final_evals.at(who).splits.at("forget").nll) << who;
      EXPECT_EQ(r->mia.at(who).members.by_attack, first.mia.at(who).members.by_attack) << who;
      EXPECT_EQ(r->extra.at(who).canaries.at("c").exposures, first.extra.at(who).canaries.at("c").exposures) << who;
    }
}

// dp=2 and tp=2 on the host-staged device (LETHE_TEST_HOST_STAGED_DEVICE=1) against the
// CPU emulation of bf16 at the same layout: the device path's gradient reduction, sharded
// master, terms, evaluation split over dp, verbatim decoding and multiple choice, and under
// tp its vocabulary-parallel embedding and cross-entropy (device ops and [N]-sized
// all-reduces) and its f32 tensor-parallel sums, give the same report and metrics, bit for
// bit.
TEST(ParallelUnlearn, DeviceLayouts) {
  auto& w = *test::mpi_world_shared();
  if (w.size() != 2) GTEST_SKIP() << "runs on two ranks";
  for (const std::string layout : {"parallel.dp=2", "parallel.tp=2"})
  for (const auto& name : kRecipes) {
    const std::string tag = layout.substr(layout.find('.') + 1, 2);
    const std::string cpu = name + "_dev_cpu_" + tag, dev = name + "_dev_cuda_" + tag;
    run(name, cpu, {layout, "train.precision=bf16"});
    ::setenv("LETHE_TEST_HOST_STAGED_DEVICE", "1", 1);
    const UnlearnResult d = run(name, dev, {layout, "train.device=cuda"});
    ::unsetenv("LETHE_TEST_HOST_STAGED_DEVICE");
    EXPECT_EQ(d.steps_run, 4);
    if (w.rank() != 0) continue;
    auto report = [&](const std::string& out) { return test::read_json(kDir / out / "report.json"); };
    auto metrics = [&](const std::string& out) { return test::metrics_without_wall_clock(kDir / out); };
    EXPECT_EQ(report(dev), report(cpu)) << name << " " << layout;
    EXPECT_EQ(metrics(dev), metrics(cpu)) << name << " " << layout;
  }
}

TEST(ParallelUnlearn, EveryTermTp2Dp2) {
  auto& w = *test::mpi_world_shared();
  ASSERT_EQ(w.size(), 4);
  const json ref = reference();
  ASSERT_FALSE(ref.is_null()) << "run the Reference test first (ctest fixture)";
  for (const auto& type : kTermTypes) {
    auto a = term_args(type);
    a.insert(a.end(), {"parallel.tp=2", "parallel.dp=2"});
    const UnlearnResult res = run(type, type + "_tp2dp2", a);
    EXPECT_EQ(res.steps_run, 2) << type;
    if (w.rank() == 0) expect_same_run(summary(res, type + "_tp2dp2"), ref[type], type + "_tp2dp2");
  }
  // Two micro-batches per step, and the plain all-reduce instead of ZeRO-1.
  const UnlearnResult accum = run("ga_kl", "ga_kl_accum_tp2dp2",
                                  {"parallel.tp=2", "parallel.dp=2", "parallel.zero1=false", "train.grad_accum=2"});
  if (w.rank() == 0) expect_same_run(summary(accum, "ga_kl_accum_tp2dp2"), ref["ga_kl_accum"], "ga_kl_accum_tp2dp2");
}

TEST(ParallelUnlearn, ResumeTp2Dp2) {
  auto& w = *test::mpi_world_shared();
  ASSERT_EQ(w.size(), 4);
  const json ref = reference();
  ASSERT_FALSE(ref.is_null()) << "run the Reference test first (ctest fixture)";
  const std::vector<std::string> grid{"parallel.tp=2", "parallel.dp=2"};
  const UnlearnResult whole = run("ga_kl", "whole_tp2dp2", grid);
  auto paused_args = grid;
  paused_args.push_back("train.run_steps=2");
  const UnlearnResult paused = run("ga_kl", "resumed_tp2dp2", paused_args);
  EXPECT_EQ(paused.stop_reason, "paused");
  EXPECT_EQ(paused.steps_run, 2);
  auto resume_args = grid;
  resume_args.push_back("train.resume=true");
  // A second paused run, for ResumeOne to continue in one process.
  run("ga_kl", "paused_for_one", paused_args);
  const UnlearnResult resumed = run("ga_kl", "resumed_tp2dp2", resume_args, /*fresh=*/false);
  EXPECT_EQ(resumed.steps_run, 4);
  if (w.rank() != 0) return;
  const json a = step_losses("whole_tp2dp2"), b = step_losses("resumed_tp2dp2");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    expect_rel(b[i]["loss"], a[i]["loss"], 1e-12, "resumed step " + std::to_string(i + 1));
    expect_rel(b[i]["loss"], ref["ga_kl"]["steps"][i]["loss"], 1e-5, "against one process");
  }
  ASSERT_EQ(resumed.evals.size(), whole.evals.size());
  for (size_t i = 0; i < whole.evals.size(); ++i)
    for (const auto& [n, m] : whole.evals[i].splits)
      expect_rel(resumed.evals[i].splits.at(n).nll, m.nll, 1e-12, "resumed eval " + n);
}

// The run paused at tp=2 x dp=2 (ResumeTp2Dp2) continued by one process.
TEST(ParallelUnlearn, ResumeOne) {
  const json ref = reference();
  ASSERT_FALSE(ref.is_null()) << "run the Reference test first (ctest fixture)";
  ASSERT_TRUE(fs::exists(kDir / "paused_for_one" / "checkpoints")) << "run ResumeTp2Dp2 first (ctest fixture)";
  const UnlearnResult res = run("ga_kl", "paused_for_one", {"train.resume=true"}, /*fresh=*/false);
  EXPECT_EQ(res.steps_run, 4);
  expect_same_run(summary(res, "paused_for_one"), ref["ga_kl"], "paused_for_one");
}

}  // namespace
}  // namespace lethe
