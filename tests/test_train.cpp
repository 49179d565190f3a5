// Training end to end: the tiny model learns a repetitive text. Threshold: after 200
// AdamW steps the loss is below 25% of its starting value (ln 256 = 5.55 at the start).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/cli/commands.h"

namespace {
namespace fs = std::filesystem;

TEST(Train, TinyModelLearnsRepetitiveText) {
  const fs::path dir = fs::temp_directory_path() / ("lethe_train_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; i < 60; ++i) text += "the quick brown fox jumps over the lazy dog. ";
  std::ofstream(dir / "corpus.txt") << text;
  std::ofstream(dir / "train.yaml") << "model: " << LETHE_SOURCE_DIR << "/configs/models/tiny.yaml\n"
                                    << "data: {path: corpus.txt, format: bytes}\n"
                                    << "train: {steps: 200, batch_size: 8, seq_len: 48, log_every: 50, seed: 7}\n"
                                    << "optimizer: {lr: 3.0e-3, schedule: cosine, warmup_steps: 10, min_lr: 3.0e-4}\n";
  std::ostringstream log;
  const auto s = lethe::cli::run_train((dir / "train.yaml").string(), {}, log);
  fs::remove_all(dir);
  ASSERT_EQ(s.losses.size(), 200u);
  EXPECT_NEAR(s.losses.front(), std::log(256.0), 0.3);
  EXPECT_LT(s.losses.back(), 0.25 * s.losses.front()) << log.str();
  EXPECT_GT(s.tokens_per_s, 0);
}

TEST(Train, SameSeedSameLosses) {
  const fs::path dir = fs::temp_directory_path() / ("lethe_train_det_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; i < 20; ++i) text += "a stitch in time saves nine. ";
  std::ofstream(dir / "corpus.txt") << text;
  std::ofstream(dir / "train.yaml") << "model: " << LETHE_SOURCE_DIR << "/configs/models/tiny-tied.yaml\n"
                                    << "data: {path: corpus.txt}\n"
                                    << "train: {steps: 5, batch_size: 2, seq_len: 32, recompute: true}\n"
                                    << "optimizer: {type: sgd, lr: 0.1, momentum: 0.9}\n";
  std::ostringstream log;
  const auto a = lethe::cli::run_train((dir / "train.yaml").string(), {}, log);
  const auto b = lethe::cli::run_train((dir / "train.yaml").string(), {}, log);
  const auto c = lethe::cli::run_train((dir / "train.yaml").string(), {"train.seed=99"}, log);
  fs::remove_all(dir);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_NE(a.losses, c.losses);
  EXPECT_LT(a.losses.back(), a.losses.front());
}

}  // namespace
