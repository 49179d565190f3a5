// `lethe unlearn` with train.precision=bf16 (the GPU's mixed-precision policy,
// emulated on the CPU) against the same recipe in f32, on a model trained
// inside the test.
//
// What must hold exactly: every model of the run (unlearned, frozen reference,
// original for the final evaluation) computes in bf16, so the KL to the
// reference is exactly 0 before the first update, and the original's final NLL
// is exactly what a bf16 model of the same weights computes; the saved weights
// are bf16 values (the master rounded), the exported model is bf16 safetensors;
// a bf16 run resumes bit-exactly and not in f32.
//
// What must hold within rounding: the bf16 run's NLLs against the f32 run's.
// The error model is tests/test_bf16_policy.cpp's (first order, unit gain):
// with k rounding points upstream of the logits, each of relative size at most
// u = 2^-8, a row of logits z_t is off by at most k u |z_t|_2, and a token's
// NLL by at most 2 max_j |dz_tj| <= 2 k u |z_t|_2 (the f32 run's own error is
// 2^-16 times smaller and is neglected). Averaged as the NLL averages:
// |NLL_bf16 - NLL_f32| <= 2 k u mean_t |z_t|_2, computed here from the f32
// model's logits on the split. After training steps the two runs also differ by
// their updates: each update follows gradients that are off by at most (k_fwd +
// k_bwd) u relative, so the NLL's movement is off by at most that fraction of
// how far it moved.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/cli/commands.h"
#include "engine/core/bf16.h"
#include "engine/core/rng.h"
#include "engine/data/sequence_sampler.h"
#include "engine/data/token_dataset.h"
#include "engine/eval/nll.h"
#include "engine/io/checkpoint.h"
#include "engine/io/model_loader.h"
#include "engine/io/safetensors.h"
#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"
#include "kernels/cross_entropy.h"
#include "tests/test_util.h"
#include "tests/unlearn_data.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr double kU = 1.0 / 256;  // bf16 unit roundoff
// Rounding points of the 2-layer test model (tests/test_bf16_policy.cpp counts
// them with its probes): 16 per layer and 2 more upstream of the logits; 18 per
// layer and 3 more in the backward.
constexpr int64_t kLayers = 2, kFwd = 16 * kLayers + 2, kBwd = 18 * kLayers + 3;

using test::docs;
using test::letters;

class Bf16Unlearn : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("lethe_unlearn_bf16_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::vector<std::string> forget, holdout, retain;
    for (int i = 0; i < 6; ++i) forget.push_back("SECRET-" + letters(uint64_t(i), 100));
    for (int i = 0; i < 6; ++i) holdout.push_back("SECRET-" + letters(uint64_t(100 + i), 100));
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
    std::ofstream(dir_ / "train.yaml") << "model: " << LETHE_SOURCE_DIR << "/configs/models/tiny.yaml\n"
                                       << "data: {path: [forget.h5, retain.h5], min_targets: 8}\n"
                                       << "train: {steps: 150, batch_size: 8, seq_len: 64, log_every: 1000, seed: 5}\n"
                                       << "optimizer: {lr: 3.0e-3, schedule: cosine, warmup_steps: 10}\n"
                                       << "checkpoint: {dir: model}\n";
    std::ostringstream log;
    cli::run_train((dir_ / "train.yaml").string(), {}, log);
    std::ofstream(dir_ / "ga_kl.yaml") << "method: ga_kl\nmodel: model\n"
                                       << "data: {forget: forget.h5, retain: retain.h5, holdout: holdout.h5, "
                                          "seq_len: 64, min_targets: 8}\n"
                                       << "terms:\n  f: {type: nll, stream: forget, weight: -1}\n"
                                       << "  r: {type: kl, stream: retain, weight: 1}\n"
                                       << "train: {steps: 6, batch_size: 4, log_every: 100, seed: 1}\n"
                                       << "optimizer: {lr: 1.0e-3, schedule: constant}\n"
                                       << "eval: {every: 3, max_sequences: 0}\n";
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static UnlearnResult run(const std::string& out, std::vector<std::string> ov) {
    ov.push_back("output.dir=" + (dir_ / out).string());
    std::ostringstream log;
    return run_unlearn(load_recipe((dir_ / "ga_kl.yaml").string(), ov), log);
  }
  static json step_line(const std::string& out, int64_t step) {
    std::ifstream in(dir_ / out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line);
      if (j.contains("step") && j.at("step").get<int64_t>() == step) return j;
    }
    ADD_FAILURE() << "no step " << step << " in " << out << "/metrics.jsonl";
    return json::object();
  }
  // 2 mean_t max_j |za_tj - zb_tj| over the tokens evaluate_nll predicts on a
  // split (the same sequences, in the same order): how far the two models' mean
  // NLLs can be apart given their logits (|d(-log p_t)| = |dz_t - sum_j p_j
  // dz_j| <= 2 max_j |dz_j|).
  static double logits_gap_bound(LlamaModel& a, LlamaModel& b, const TokenDataset& ds) {
    SamplerConfig sc;
    sc.seq_len = 64;
    sc.shuffle = false;
    const SequenceSampler s(ds, sc);
    double sum = 0;
    int64_t n = 0;
    Tensor tok = Tensor::zeros({1, 64}, DType::i32), tgt = Tensor::empty({1, 64}, DType::i32);
    for (int64_t i = 0; i < s.n_sequences(); ++i) {
      s.sequence(i, tok.data<int32_t>(), tgt.data<int32_t>());
      const std::vector<double> za = test::values(a.forward_logits(tok)), zb = test::values(b.forward_logits(tok));
      const int64_t V = a.config().vocab_size;
      for (int64_t t = 0; t < 64; ++t) {
        if (tgt.data<int32_t>()[t] == ops::kIgnoreIndex) continue;
        double m = 0;
        for (int64_t j = 0; j < V; ++j) m = std::max(m, std::abs(za[size_t(t * V + j)] - zb[size_t(t * V + j)]));
        sum += 2 * m;
        ++n;
      }
    }
    return sum / double(n);
  }
  static fs::path dir_;
};
fs::path Bf16Unlearn::dir_;

TEST_F(Bf16Unlearn, MatchesTheF32RunWithinRoundingAndEveryModelIsBf16) {
  const UnlearnResult f32 = run("f32", {"train.precision=f32"});
  const UnlearnResult b16 = run("bf16", {"train.precision=bf16", "output.export_hf=true"});
  ASSERT_EQ(b16.steps_run, 6);

  // The frozen reference is bf16 too: before the first update the model and the
  // reference compute the same logits bit for bit, so the KL term is exactly 0
  // (an f32 reference against the bf16 model would not be).
  EXPECT_EQ(step_line("bf16", 1).at("terms").at("kl@retain").get<double>(), 0.0);
  EXPECT_EQ(step_line("f32", 1).at("terms").at("kl@retain").get<double>(), 0.0);

  // The original model in the final evaluation is bf16: its retain NLL is what
  // a bf16 model of the same weights computes (retain is evaluated whole, in
  // both).
  const LoadedModel w = load_model((dir_ / "model").string());
  LlamaModel direct(w.config, Precision::bf16);
  assign_weights(direct, w);
  const TokenDataset retain = load_token_dataset((dir_ / "retain.h5").string(), 256);
  const double direct_nll = evaluate_nll(direct, retain, 64, 8).mean_nll();
  const double run_nll = b16.final_evals.at("before").splits.at("retain").nll;
  // Same model, same sequences; only the batch grouping may differ, which
  // changes f32 sums of at most 2^-24 relative per token's log-prob terms: far
  // below 1e-5 nats.
  EXPECT_NEAR(run_nll, direct_nll, 1e-5);

  // The bf16 and f32 originals within rounding of each other, and not equal
  // (the rounding is on), on retain, which both final evaluations read whole.
  // Through the f64 model:
  //   |NLL_bf16 - NLL_f32| <= |NLL_bf16(w16) - NLL_f64(w16)|   the bf16
  //   activations
  //                          + |NLL_f64(w16) - NLL_f64(w)|      the weights'
  //                          rounding to bf16
  //                          + |NLL_f64(w) - NLL_f32(w)|        f32's own
  //                          rounding
  // with the first and last bounded from each pair's logits and the middle one
  // computed.
  LlamaModel m32(w.config), m64(w.config, DType::f64), m64r(w.config, DType::f64);
  assign_weights(m32, w);
  assign_weights(m64, w);
  m64r.params().flat().copy_from(m64.params().flat());
  {
    Tensor r = m64r.params().flat().to(DType::f32);
    round_to_bf16_(r);
    m64r.params().flat().copy_from(r);
  }
  const double act16 = logits_gap_bound(direct, m64r, retain), act32 = logits_gap_bound(m32, m64, retain);
  const double wround =
      std::abs(evaluate_nll(m64r, retain, 64, 8).mean_nll() - evaluate_nll(m64, retain, 64, 8).mean_nll());
  const double before16 = b16.final_evals.at("before").splits.at("retain").nll;
  const double before32 = f32.final_evals.at("before").splits.at("retain").nll;
  EXPECT_NE(before16, before32);
  EXPECT_LE(std::abs(before16 - before32), act16 + wround + act32);
  std::printf(
      "retain, original model: f32 %.6f, bf16 %.6f; |difference| %.3g "
      "<= %.3g (bf16 activations %.3g + "
      "weight rounding %.3g + f32 %.3g)\n",
      before32, before16, std::abs(before16 - before32), act16 + wround + act32, act16, wround, act32);

  // After 6 steps: the runs' updates follow gradients that are off by at most
  // (kFwd + kBwd) u relative (first-order worst case), so an NLL's movement is
  // off by at most that fraction of how far it moved, on top of the difference
  // at the start.
  const double start_gap = act16 + wround + act32;
  for (const std::string split : {"forget", "retain", "holdout"}) {
    const double a = f32.evals.front().splits.at(split).nll, b = b16.evals.front().splits.at(split).nll;
    const double a1 = f32.evals.back().splits.at(split).nll, b1 = b16.evals.back().splits.at(split).nll;
    const double tol = std::abs(a - b) + start_gap + double(kFwd + kBwd) * kU * std::abs(a1 - a);
    EXPECT_LE(std::abs(a1 - b1), tol) << split << " after 6 steps: f32 " << a1 << ", bf16 " << b1;
    std::printf(
        "%-8s in-run: before f32 %.5f bf16 %.5f | after f32 %.5f bf16 "
        "%.5f | tolerance %.3g\n",
        split.c_str(), a, b, a1, b1, tol);
  }
  // Both runs ascend on the forget set.
  EXPECT_GT(f32.evals.back().splits.at("forget").nll, f32.evals.front().splits.at("forget").nll + 0.05);
  EXPECT_GT(b16.evals.back().splits.at("forget").nll, b16.evals.front().splits.at("forget").nll + 0.05);

  // The final weights are bf16 values, recorded as a bf16 run, and exported as
  // bf16.
  const Checkpoint fin = Checkpoint::open(b16.final_dir);
  EXPECT_EQ(fin.manifest().at("precision"), "bf16");
  int64_t not_bf16 = 0;
  for (const auto& name : fin.names("weights")) {
    const Tensor t = fin.read("weights", name, DType::f32);
    for (int64_t i = 0; i < t.numel(); ++i) not_bf16 += !is_bf16_value(t.data<float>()[i]);
  }
  EXPECT_EQ(not_bf16, 0);
  std::ifstream cfg(dir_ / "bf16" / "hf" / "config.json");
  EXPECT_EQ(json::parse(cfg).at("torch_dtype"), "bfloat16");
  bool any = false;
  for (const auto& e : fs::directory_iterator(dir_ / "bf16" / "hf"))
    if (e.path().extension() == ".safetensors")
      for (const SafetensorsFile f = SafetensorsFile::open(e.path().string()); const auto& name : f.names()) {
        EXPECT_EQ(f.entry(name).dtype, "BF16") << name;
        any = true;
      }
  EXPECT_TRUE(any);
}

TEST_F(Bf16Unlearn, ResumesBitExactlyAndOnlyInBf16) {
  const UnlearnResult a = run("res_a", {"train.precision=bf16"});
  const std::vector<std::string> ov = {"train.precision=bf16", "output.checkpoint_every=2"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), ov.begin(), ov.end());
    return extra;
  };
  const UnlearnResult paused = run("res_b", with({"train.run_steps=4"}));
  EXPECT_EQ(paused.stop_reason, "paused");
  try {
    run("res_b", {"train.precision=f32", "train.resume=true", "output.checkpoint_every=2"});
    FAIL() << "a bf16 run resumed in f32";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("started in bf16 precision and train.precision asks for f32"),
              std::string::npos)
        << e.what();
  }
  const UnlearnResult b = run("res_b", with({"train.resume=true"}));
  EXPECT_EQ(b.steps_run, 6);
  ASSERT_EQ(a.evals.size(), b.evals.size());
  for (size_t i = 0; i < a.evals.size(); ++i)
    EXPECT_EQ(a.evals[i].splits.at("forget").nll, b.evals[i].splits.at("forget").nll) << "eval " << i;
  auto sha = [&](const char* out) {
    std::ifstream in(dir_ / out / "report.json");
    return json::parse(in).at("unlearned_sha256").get<std::string>();
  };
  EXPECT_EQ(sha("res_a"), sha("res_b"));
}

}  // namespace
}  // namespace lethe
