// `lethe train` checkpoints and resume on a token dataset: an interrupted run resumed
// from its checkpoint reproduces the uninterrupted run bit for bit (losses and weights);
// a checkpoint directory refuses to be reused by another run.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "engine/cli/commands.h"
#include "engine/core/bf16.h"
#include "engine/data/token_dataset.h"
#include "engine/io/checkpoint.h"
#include "engine/io/sha256.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

class Resume : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lethe_resume_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    TokenDataset ds;
    ds.tokenizer = "bytes";
    ds.vocab_size = 256;
    const std::string text[3] = {"It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
                                 "However little known the feelings or views of such a man may be on his first entering a neighbourhood,",
                                 "this truth is so well fixed in the minds of the surrounding families."};
    ds.offsets = {0};
    for (const auto& t : text) {
      for (unsigned char ch : t) ds.tokens.push_back(ch);
      ds.offsets.push_back(int64_t(ds.tokens.size()));
      ds.doc_sha256.push_back(sha256(t.data(), t.size()));
    }
    save_token_dataset((dir_ / "train.h5").string(), ds);
    std::ofstream(dir_ / "train.yaml") << "model: " << LETHE_SOURCE_DIR << "/configs/models/tiny.yaml\n"
                                       << "data: {path: train.h5}\n"
                                       << "train: {steps: 8, batch_size: 2, seq_len: 32, log_every: 1, seed: 3}\n"
                                       << "optimizer: {lr: 3.0e-3, schedule: cosine, warmup_steps: 2, weight_decay: 0.1}\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  cli::TrainSummary train(std::vector<std::string> ov) {
    std::ostringstream log;
    auto summary = cli::run_train((dir_ / "train.yaml").string(), ov, log);
    log_ = log.str();
    return summary;
  }
  std::string weights(const std::string& ckpt, const std::string& group = "weights") {
    const Checkpoint c = Checkpoint::open(ckpt);
    std::string all;
    for (const auto& n : c.names(group)) {
      const Tensor t = c.read(group, n, DType::f32);
      all.append(static_cast<const char*>(t.raw()), t.nbytes());
    }
    return all;
  }
  fs::path dir_;
  std::string log_;  // the last run's output
};

TEST_F(Resume, InterruptedRunResumesBitExactly) {
  const auto full = train({"checkpoint.dir=" + (dir_ / "a").string(), "checkpoint.every=3"});
  ASSERT_EQ(full.losses.size(), 8u);
  const std::string b = (dir_ / "b").string();
  const auto first = train({"checkpoint.dir=" + b, "checkpoint.every=3", "train.run_steps=5"});
  ASSERT_EQ(first.losses.size(), 5u);
  EXPECT_EQ(latest_checkpoint(b), b + "/step_00000005");
  const auto rest = train({"checkpoint.dir=" + b, "checkpoint.every=3", "train.resume=true"});
  ASSERT_EQ(rest.losses.size(), 3u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(first.losses[i], full.losses[i]) << i;
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(rest.losses[i], full.losses[5 + i]) << i;
  EXPECT_EQ(weights(b + "/step_00000008"), weights((dir_ / "a" / "step_00000008").string()));
}

TEST_F(Resume, IncompleteLatestFallsBackToPrevious) {
  const std::string a = (dir_ / "a").string(), b = (dir_ / "b").string();
  train({"checkpoint.dir=" + a});
  train({"checkpoint.dir=" + b, "checkpoint.every=2", "train.run_steps=6"});
  fs::remove(fs::path(b) / "step_00000006" / "COMPLETE");  // as if killed mid-save
  const auto rest = train({"checkpoint.dir=" + b, "checkpoint.every=2", "train.resume=true"});
  EXPECT_EQ(rest.losses.size(), 4u);  // from step 4
  EXPECT_EQ(weights(b + "/step_00000008"), weights(a + "/step_00000008"));
}

TEST_F(Resume, DirectoryOfAnotherRunIsRefused) {
  const std::string a = (dir_ / "a").string();
  train({"checkpoint.dir=" + a, "train.run_steps=2"});
  const std::string before = weights(a + "/step_00000002");
  try {
    train({"checkpoint.dir=" + a});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds a run (step_00000002)"), std::string::npos) << e.what();
  }
  try {
    train({"checkpoint.dir=" + a, "train.resume=true", "optimizer.lr=1.0e-2"});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds a different run: its 'schedule' settings differ"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(weights(a + "/step_00000002"), before);  // nothing was overwritten
  EXPECT_THROW(train({"train.resume=true"}), Error);  // resume without a directory
}

// A data file of the same name with other contents (a regenerated corpus) is another run:
// its cursor would continue into different documents. A checkpoint that predates the data
// hashes resumes with a warning.
TEST_F(Resume, SameFileNameWithOtherContentsIsRefused) {
  const std::string a = (dir_ / "a").string();
  train({"checkpoint.dir=" + a, "train.run_steps=2"});
  const std::string before = weights(a + "/step_00000002");
  TokenDataset ds = load_token_dataset((dir_ / "train.h5").string(), 256);
  ds.tokens[5] ^= 1;  // one token changed
  ds.doc_sha256[0] = sha256(ds.tokens.data(), 1);
  const fs::path kept = dir_ / "train.h5.orig";
  fs::rename(dir_ / "train.h5", kept);
  save_token_dataset((dir_ / "train.h5").string(), ds);
  try {
    train({"checkpoint.dir=" + a, "train.resume=true"});
    FAIL() << "resumed on other data";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the contents of"), std::string::npos) << msg;
    EXPECT_NE(msg.find("train.h5 differ from the file it trained on"), std::string::npos) << msg;
  }
  EXPECT_EQ(weights(a + "/step_00000002"), before);  // nothing was overwritten
  // The original file resumes.
  fs::rename(kept, dir_ / "train.h5");
  EXPECT_EQ(train({"checkpoint.dir=" + a, "train.resume=true"}).losses.size(), 6u);
  // An older checkpoint, without the hashes: resumed, with a warning.
  const std::string b = (dir_ / "b").string();
  train({"checkpoint.dir=" + b, "train.run_steps=2"});
  const fs::path man = fs::path(b) / "step_00000002" / "manifest.json";
  nlohmann::json m = nlohmann::json::parse(std::ifstream(man));
  m["run"].erase("data_sha256");
  const std::string text = m.dump();
  std::ofstream(man, std::ios::trunc) << text;
  std::ofstream(man.parent_path() / "COMPLETE", std::ios::trunc) << to_hex(sha256(text.data(), text.size())) << "\n";
  EXPECT_EQ(train({"checkpoint.dir=" + b, "train.resume=true"}).losses.size(), 6u);
  EXPECT_NE(log_.find("records no data hashes"), std::string::npos) << log_;
}

TEST_F(Resume, NanLossStopsBeforeAnythingIsWritten) {
  const std::string a = (dir_ / "a").string();
  train({"checkpoint.dir=" + a, "train.run_steps=2"});
  const std::string before = weights(a + "/step_00000002");
  // A huge learning rate drives the loss to inf/NaN within a few steps.
  EXPECT_THROW(train({"checkpoint.dir=" + (dir_ / "c").string(), "optimizer.lr=1.0e+30", "optimizer.grad_clip=0",
                      "checkpoint.every=1", "train.steps=50"}),
               Error);
  EXPECT_EQ(weights(a + "/step_00000002"), before);
}

// bf16 (train.precision=bf16, emulated on the CPU): the checkpoint's weights are only the
// master weights rounded to bf16, so the checkpoint must also hold the fp32 master
// (optim_master) for a resume to continue the run bit for bit.
TEST_F(Resume, Bf16RunResumesBitExactlyFromItsMasterWeights) {
  const std::string a = (dir_ / "a").string(), b = (dir_ / "b").string();
  const auto full = train({"checkpoint.dir=" + a, "train.precision=bf16"});
  const auto first = train({"checkpoint.dir=" + b, "train.precision=bf16", "train.run_steps=5"});
  const auto rest = train({"checkpoint.dir=" + b, "train.precision=bf16", "train.resume=true"});
  ASSERT_EQ(full.losses.size(), 8u);
  ASSERT_EQ(rest.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(rest.losses[i], full.losses[5 + i]) << i;
  EXPECT_EQ(weights(b + "/step_00000008"), weights(a + "/step_00000008"));

  const Checkpoint c = Checkpoint::open(b + "/step_00000005");
  EXPECT_EQ(c.manifest().at("precision"), "bf16");
  int64_t not_bf16 = 0, master_differs = 0, n = 0;
  for (const auto& name : c.names("weights")) {
    const Tensor w = c.read("weights", name, DType::f32), m = c.read("optim_master", name, DType::f32);
    const float *pw = w.data<float>(), *pm = m.data<float>();
    for (int64_t i = 0; i < w.numel(); ++i, ++n) {
      not_bf16 += !is_bf16_value(pw[i]);
      master_differs += pw[i] != pm[i];
      EXPECT_EQ(pw[i], round_bf16(pm[i])) << name << "[" << i << "]: the weights are the master rounded";
    }
  }
  EXPECT_EQ(not_bf16, 0);
  // The master carries what the weights cannot: after 5 AdamW steps most weights sit
  // between two bf16 values (an update of lr = 3e-3 is below half a bf16 step of any
  // weight above 0.77, and init weights are drawn with std 0.02, so each step moves most
  // masters off the bf16 grid).
  EXPECT_GT(master_differs, n / 2) << master_differs << " of " << n;
}

// train.device=cuda served by the host-staged device (LETHE_TEST_HOST_STAGED_DEVICE=1: host
// memory as device memory, the CPU kernels behind the op boundary): the command's device
// path (the model and optimizer in device memory, checkpoints staged out of it, a resume
// loaded back into it) must reproduce the CPU emulation of bf16 bit for bit, which is what
// a CUDA run is then compared against.
TEST_F(Resume, DeviceRunEqualsTheBf16EmulationAndResumes) {
  const std::string a = (dir_ / "a").string(), b = (dir_ / "b").string();
  const auto cpu = train({"checkpoint.dir=" + a, "checkpoint.every=5", "train.precision=bf16"});
  struct Env {
    Env() { ::setenv("LETHE_TEST_HOST_STAGED_DEVICE", "1", 1); }
    ~Env() { ::unsetenv("LETHE_TEST_HOST_STAGED_DEVICE"); }
  } env;
  const auto first = train({"checkpoint.dir=" + b, "checkpoint.every=5", "train.device=cuda", "train.run_steps=5"});
  const auto rest = train({"checkpoint.dir=" + b, "checkpoint.every=5", "train.device=cuda", "train.resume=true"});
  EXPECT_NE(log_.find("device: cuda (the host-staged test device"), std::string::npos) << log_;
  ASSERT_EQ(cpu.losses.size(), 8u);
  ASSERT_EQ(first.losses.size(), 5u);
  ASSERT_EQ(rest.losses.size(), 3u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(first.losses[i], cpu.losses[i]) << i;
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(rest.losses[i], cpu.losses[5 + i]) << i;
  for (const char* step : {"/step_00000005", "/step_00000008"})
    for (const char* group : {"weights", "optim_master", "optim_m", "optim_v"})
      EXPECT_EQ(weights(b + step, group), weights(a + step, group)) << step << " " << group;
  EXPECT_EQ(Checkpoint::open(b + "/step_00000008").manifest().at("precision"), "bf16");
  // f32 is the CPU's: the device refuses it before anything is written.
  try {
    train({"checkpoint.dir=" + (dir_ / "c").string(), "train.device=cuda", "train.precision=f32"});
    ADD_FAILURE() << "an f32 run on the device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda runs the bf16 policy"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "c"));
}

TEST_F(Resume, ResumeInAnotherPrecisionIsRefused) {
  const std::string a = (dir_ / "a").string();
  train({"checkpoint.dir=" + a, "train.run_steps=2"});
  const std::string before = weights(a + "/step_00000002");
  try {
    train({"checkpoint.dir=" + a, "train.resume=true", "train.precision=bf16"});
    FAIL() << "an f32 run resumed in bf16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("started in f32 precision and train.precision asks for bf16"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(weights(a + "/step_00000002"), before);
  EXPECT_EQ(latest_checkpoint(a), a + "/step_00000002");
}

// train.device: a device that cannot run the model is refused before anything is written.
TEST_F(Resume, UnservableDeviceIsAClearError) {
  const std::string a = (dir_ / "a").string();
  auto expect_error = [&](const std::vector<std::string>& ov, const std::string& needle) {
    try {
      train(ov);
      FAIL() << "expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(a));
  };
  expect_error({"checkpoint.dir=" + a, "train.device=gpu"}, "train.device': must be cpu, cuda or auto, got 'gpu'");
  expect_error({"checkpoint.dir=" + a, "train.precision=fp16"}, "must be bf16 or f32, got 'fp16'");
  // cuda: without CUDA in the build, without a visible GPU, or (in this version) with one.
  expect_error({"checkpoint.dir=" + a, "train.device=cuda"}, "train.device': cuda: ");
  const auto ok = train({"checkpoint.dir=" + a, "train.device=cpu", "train.run_steps=1"});
  EXPECT_EQ(ok.losses.size(), 1u);
}

}  // namespace
}  // namespace lethe
