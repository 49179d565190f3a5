// Config validation: every bad input is an error that names the file and the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/io/model_config_yaml.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

class ConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lethe_cfg_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p) << text;
    return p;
  }
  // Expects load to fail with a message containing every string in `needles`.
  void expect_error(const std::string& path, std::initializer_list<std::string> needles,
                    const std::vector<std::string>& overrides = {}) {
    try {
      load_llama_config(path, overrides);
      FAIL() << "expected an error for " << path;
    } catch (const Error& e) {
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  }
  fs::path dir_;
};

const char* kGood =
    "vocab_size: 100\ndim: 32\nn_layers: 2\nn_heads: 4\nn_kv_heads: 2\nffn_dim: 64\n";

TEST_F(ConfigFiles, GoodConfigLoadsWithDefaults) {
  const LlamaConfig c = load_llama_config(write("m.yaml", kGood));
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.hd(), 8);
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_FALSE(c.tie_embeddings);
}

TEST_F(ConfigFiles, UnknownKeyIsNamed) {
  expect_error(write("m.yaml", std::string(kGood) + "n_layer: 3\n"), {"m.yaml", "n_layer", "unknown key"});
}

TEST_F(ConfigFiles, UnknownNestedKeyIsNamedWithItsSection) {
  expect_error(write("m.yaml", std::string(kGood) + "rope_scaling:\n  type: llama3\n  factr: 8\n"),
               {"m.yaml", "rope_scaling.factr", "unknown key"});
}

TEST_F(ConfigFiles, WrongTypeIsNamed) {
  expect_error(write("m.yaml", "vocab_size: many\ndim: 32\nn_layers: 2\nn_heads: 4\nffn_dim: 64\n"),
               {"m.yaml", "vocab_size", "expected an integer", "'many'"});
  expect_error(write("m2.yaml", std::string(kGood) + "norm_eps: [1, 2]\n"), {"m2.yaml", "norm_eps", "a list"});
  expect_error(write("m3.yaml", std::string(kGood) + "tie_embeddings: perhaps\n"),
               {"m3.yaml", "tie_embeddings", "true or false"});
  expect_error(write("m4.yaml", std::string(kGood) + "max_seq_len: 2.5\n"), {"m4.yaml", "max_seq_len", "integer"});
}

TEST_F(ConfigFiles, DuplicateKeyIsNamed) {
  expect_error(write("m.yaml", std::string(kGood) + "n_kv_heads: 4\n"), {"m.yaml", "n_kv_heads", "more than once"});
}

TEST_F(ConfigFiles, HeadsNotDivisibleByKvHeads) {
  expect_error(write("m.yaml", "vocab_size: 100\ndim: 32\nn_layers: 2\nn_heads: 4\nn_kv_heads: 3\nffn_dim: 64\n"),
               {"m.yaml", "n_heads (4) is not divisible by n_kv_heads (3)"});
}

TEST_F(ConfigFiles, MissingRequiredKey) {
  expect_error(write("m.yaml", "vocab_size: 100\ndim: 32\nn_layers: 2\nn_heads: 4\n"),
               {"m.yaml", "ffn_dim", "missing"});
}

TEST_F(ConfigFiles, MissingFile) { expect_error((dir_ / "absent.yaml").string(), {"absent.yaml", "no such file"}); }

TEST_F(ConfigFiles, SyntaxErrorHasLine) {
  expect_error(write("m.yaml", "vocab_size: 100\ndim: [32\n"), {"m.yaml", "YAML syntax error", "line"});
}

TEST_F(ConfigFiles, NonPositiveAndOddValues) {
  expect_error(write("m.yaml", "vocab_size: 0\ndim: 32\nn_layers: 2\nn_heads: 4\nffn_dim: 64\n"),
               {"m.yaml", "vocab_size must be positive"});
  expect_error(write("m2.yaml", "vocab_size: 10\ndim: 36\nn_layers: 2\nn_heads: 4\nffn_dim: 64\n"),
               {"m2.yaml", "head_dim (9) must be even"});
  expect_error(write("m3.yaml", std::string(kGood) + "rope_scaling:\n  type: yarn\n"), {"m3.yaml", "yarn"});
}

TEST_F(ConfigFiles, OverridesApplyAndAreValidated) {
  const std::string p = write("m.yaml", kGood);
  EXPECT_EQ(load_llama_config(p, {"n_layers=5"}).n_layers, 5);
  EXPECT_EQ(load_llama_config(p, {"rope_scaling.type=linear", "rope_scaling.factor=2"}).rope_scaling.factor, 2.0);
  expect_error(p, {"m.yaml", "n_layrs", "unknown key"}, {"n_layrs=5"});
  expect_error(p, {"m.yaml", "n_layers", "integer"}, {"n_layers=five"});
  EXPECT_THROW(load_llama_config(p, {"n_layers"}), Error);
}

TEST_F(ConfigFiles, EveryPresetLoads) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(std::string(LETHE_SOURCE_DIR) + "/configs/models")) {
    const LlamaConfig c = load_llama_config(e.path().string());
    EXPECT_GT(c.n_params(), 0) << e.path();
    ++n;
  }
  EXPECT_GE(n, 7);
}

}  // namespace
}  // namespace lethe
