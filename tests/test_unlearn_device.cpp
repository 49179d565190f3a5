// `lethe unlearn` and `lethe generate` on a device (train.device=cuda), served by the
// host-staged device (LETHE_TEST_HOST_STAGED_DEVICE=1: host memory as device memory, the CPU
// kernels behind the op boundary): the commands' device path runs on a machine without a
// GPU and must reproduce the CPU emulation of the bf16 policy bit for bit, which is what a
// CUDA run is then compared against (tests/cuda).
//
// Bit for bit because both compute the same values in the same order: the device keeps bf16
// in bf16 storage where the emulation keeps bf16 values in f32, and every term that reads
// logits, log-probs or hidden states reads them through host copies (to_host) and writes its
// gradient back through the same rounding. One recipe holds every term type, with the
// frozen reference, the oracle, the in-run and final evaluations, the MIA suite, verbatim
// memorisation (greedy decoding with a key/value cache) and multiple choice, so any term or
// metric that read device memory as if it were host memory, or skipped a rounding, shows.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/cli/commands.h"
#include "engine/io/checkpoint.h"
#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"
#include "tests/run_files.h"
#include "tests/unlearn_data.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

struct HostStagedDevice {
  HostStagedDevice() { ::setenv("LETHE_TEST_HOST_STAGED_DEVICE", "1", 1); }
  ~HostStagedDevice() { ::unsetenv("LETHE_TEST_HOST_STAGED_DEVICE"); }
};

class DeviceUnlearn : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("lethe_unlearn_device_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::vector<std::string> forget, holdout, retain;
    for (int i = 0; i < 6; ++i) forget.push_back("SECRET-" + test::letters(uint64_t(i), 90));
    for (int i = 0; i < 6; ++i) holdout.push_back("SECRET-" + test::letters(uint64_t(100 + i), 90));
    std::ifstream corpus(std::string(LETHE_SOURCE_DIR) + "/configs/demo/corpus.txt");
    for (std::string para, line; std::getline(corpus, line) && retain.size() < 8;) {
      if (line.empty()) {
        if (!para.empty()) retain.push_back(para);
        para.clear();
      } else {
        para += line + "\n";
      }
    }
    save_token_dataset((dir_ / "forget.h5").string(), test::docs(forget));
    save_token_dataset((dir_ / "holdout.h5").string(), test::docs(holdout));
    save_token_dataset((dir_ / "retain.h5").string(), test::docs(retain));
    const std::string src = LETHE_SOURCE_DIR;
    // Every term type; the weights only keep the sum's gradient moderate.
    std::ofstream(dir_ / "all.yaml")
        << "method: all_terms\nmodel: " << src << "/data/models/tiny-lm-full\n"
        << "oracle: " << src << "/data/models/tiny-lm-oracle\n"
        << "data: {forget: forget.h5, retain: retain.h5, holdout: holdout.h5, general: retain.h5, seq_len: 48, "
           "min_targets: 8}\n"
        << "terms:\n"
        << "  ga: {type: nll, stream: forget, weight: -0.5}\n"
        << "  gd: {type: nll, stream: retain, weight: 0.5}\n"
        << "  npo: {type: npo, stream: forget, weight: 1.0, beta: 0.5}\n"
        << "  simnpo: {type: simnpo, stream: forget, weight: 0.5, beta: 2.0, delta: 1.0}\n"
        << "  wga: {type: wga, stream: forget, weight: -0.5, alpha: 0.5}\n"
        << "  flood: {type: flood, stream: forget, weight: 0.5, flood: 3.0}\n"
        << "  undial: {type: undial, stream: forget, weight: 0.5, gamma: 2.0}\n"
        << "  rl: {type: random_labels, stream: forget, weight: 0.3, label_source: reference, top_k: 20, "
           "top_p: 0.9, seed: 4}\n"
        << "  rlw: {type: random_labels, stream: forget, weight: 0.2, label_source: reference, seed: 6}\n"
        << "  adv: {type: adversarial, stream: forget, weight: 0.3}\n"
        << "  rmuf: {type: rmu_forget, stream: forget, weight: 0.2, layer: 2, steering: adaptive, beta: 2.0, "
           "seed: 3}\n"
        << "  rmur: {type: rmu_retain, stream: retain, weight: 1.0, layer: 2}\n"
        << "  kl: {type: kl, stream: general, weight: 1.0}\n"
        << "train: {steps: 2, batch_size: 2, seed: 1, log_every: 1}\n"
        << "optimizer: {type: adamw, lr: 1.0e-3, schedule: constant, grad_clip: 1.0, weight_decay: 0.01}\n"
        << "eval: {every: 1, max_sequences: 4, final_max_sequences: 4, mia_max_docs: 0, verbatim_prefix: 16, "
           "verbatim_continuation: 8, verbatim_max_docs: 3, mc_task: "
        << src << "/data/tasks/austen_mc.jsonl}\n"
        << "output: {export_hf: true}\n";
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static UnlearnResult run(const std::string& out, std::vector<std::string> ov, std::string* log_out = nullptr) {
    ov.push_back("output.dir=" + (dir_ / out).string());
    std::ostringstream log;
    UnlearnResult r = run_unlearn(load_recipe((dir_ / "all.yaml").string(), ov), log);
    if (log_out) *log_out = log.str();
    return r;
  }
  static json report(const std::string& out) { return test::read_json(dir_ / out / "report.json"); }
  static std::vector<json> metrics(const std::string& out) { return test::metrics_without_wall_clock(dir_ / out); }
  static std::string bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }
  static std::string weights(const std::string& ck) {
    const Checkpoint c = Checkpoint::open(ck);
    std::string all;
    for (const auto& name : c.names("weights")) {
      const Tensor t = c.read("weights", name, DType::f32);
      all += name;
      all.append(static_cast<const char*>(t.raw()), size_t(t.nbytes()));
    }
    return all;
  }
  static fs::path dir_;
};
fs::path DeviceUnlearn::dir_;

TEST_F(DeviceUnlearn, EveryTermAndMetricEqualsTheBf16EmulationAndResumes) {
  const UnlearnResult cpu = run("cpu", {"train.precision=bf16"});
  ASSERT_EQ(cpu.steps_run, 2);
  HostStagedDevice env;
  std::string log;
  // With half the layers recomputed in the backward: the same numbers (recomputation
  // repeats the forward's ops on the same inputs).
  const UnlearnResult dev = run("dev", {"train.device=cuda", "train.recompute=2"}, &log);
  EXPECT_NE(log.find("device: cuda (the host-staged test device"), std::string::npos) << log;
  ASSERT_EQ(dev.steps_run, 2);

  // Every number of the report (terms, NLLs, MIA scores of every attack, verbatim
  // ROUGE-L, multiple choice, the unlearned weights' digest) and every metrics line.
  const json rc = report("cpu"), rd = report("dev");
  EXPECT_EQ(rd, rc) << "device report:\n" << rd.dump(1) << "\nemulation report:\n" << rc.dump(1);
  EXPECT_TRUE(rc.contains("verbatim_memorisation")) << rc.dump(1);
  EXPECT_TRUE(rc.contains("multiple_choice")) << rc.dump(1);
  const std::vector<json> mc = metrics("cpu"), md = metrics("dev");
  ASSERT_EQ(md.size(), mc.size());
  for (size_t i = 0; i < mc.size(); ++i) EXPECT_EQ(md[i], mc[i]) << "metrics line " << i;
  // Each term moved the loss (a term whose gradient were lost would still match itself).
  ASSERT_TRUE(mc.size() > 1 && mc[1].contains("terms")) << mc[1].dump();
  EXPECT_EQ(mc[1].at("terms").size(), 12u) << mc[1].dump();
  // The checkpoint (staged out of the device, bf16 widened to f32) and the export (bf16).
  EXPECT_EQ(weights(dev.final_dir), weights(cpu.final_dir));
  EXPECT_EQ(Checkpoint::open(dev.final_dir).manifest().at("precision"), "bf16");
  EXPECT_EQ(bytes(dir_ / "dev" / "hf" / "model.safetensors"), bytes(dir_ / "cpu" / "hf" / "model.safetensors"));

  // Paused after step 1 on the device and resumed there: the same run.
  const UnlearnResult paused = run("res", {"train.device=cuda", "train.run_steps=1", "output.checkpoint_every=1"});
  EXPECT_EQ(paused.stop_reason, "paused");
  const UnlearnResult resumed = run("res", {"train.device=cuda", "train.resume=true", "output.checkpoint_every=1"});
  EXPECT_EQ(resumed.steps_run, 2);
  EXPECT_EQ(report("res").at("unlearned_sha256"), rc.at("unlearned_sha256"));
  EXPECT_EQ(report("res").at("final_eval"), rc.at("final_eval"));
  EXPECT_EQ(weights(resumed.final_dir), weights(cpu.final_dir));
}

// train.recompute beyond the model's depth is refused, naming the key, before anything is
// written.
TEST_F(DeviceUnlearn, RecomputeBeyondTheModelIsRefused) {
  try {
    run("deep", {"train.recompute=9"});
    ADD_FAILURE() << "recompute 9 of 4 layers";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key 'train.recompute': 9 layers, the model has 4"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "deep"));
}

// lethe generate on the device: greedy decoding with the key/value cache in device memory.
TEST_F(DeviceUnlearn, GenerateEqualsTheBf16Emulation) {
  const std::string model = std::string(LETHE_SOURCE_DIR) + "/data/models/tiny-lm-full";
  auto generate = [&](const std::string& device_opt, const std::string& precision_opt) {
    testing::internal::CaptureStdout();
    const int rc = cli::generate_main(
        {model, (dir_ / "retain.h5").string(), "doc=1", "prefix=24", "tokens=40", device_opt, precision_opt});
    const std::string out = testing::internal::GetCapturedStdout();
    EXPECT_EQ(rc, 0) << out;
    return out;
  };
  const std::string cpu = generate("device=cpu", "precision=bf16");
  std::string dev;
  {
    HostStagedDevice env;
    dev = generate("device=cuda", "precision=bf16");
  }
  EXPECT_NE(cpu.find("greedy continuation (40 tokens)"), std::string::npos) << cpu;
  EXPECT_EQ(dev, cpu);
}

}  // namespace
}  // namespace lethe
