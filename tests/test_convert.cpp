// Model interchange through the `lethe convert` command: a checkpoint written by
// transformers' save_pretrained (bf16, sharded) goes in, its logits match transformers',
// and it comes back out with every tensor's name, dtype, shape and bytes unchanged.
// Malformed model directories fail with the file and tensor named, writing nothing.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/io/checkpoint.h"
#include "engine/io/hf_model.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/model/llama.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kHf = std::string(LETHE_SOURCE_DIR) + "/tests/golden/hf_tiny_bf16";

class Convert : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lethe_conv_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  int run(const std::string& args) {
    const std::string cmd = std::string(LETHE_BIN) + " " + args + " >" + (dir_ / "out").string() + " 2>" +
                            (dir_ / "err").string();
    const int st = std::system(cmd.c_str());
    std::ifstream e(dir_ / "err");
    err_ = std::string(std::istreambuf_iterator<char>(e), {});
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  }
  // A copy of the fixture to damage.
  std::string copy_hf() {
    const fs::path d = dir_ / "hf_copy";
    fs::copy(kHf, d);
    return d.string();
  }
  fs::path dir_;
  std::string err_;
};

TEST_F(Convert, HfRoundTripIsBitIdentical) {
  const std::string ck = (dir_ / "ck").string(), back = (dir_ / "back").string();
  ASSERT_EQ(run("convert hf-to-lethe " + kHf + " " + ck), 0) << err_;
  ASSERT_EQ(run("convert lethe-to-hf " + ck + " " + back), 0) << err_;
  const HfModel a = read_hf_model(kHf), b = read_hf_model(back);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].first, b.tensors[i].first);
    EXPECT_EQ(a.tensors[i].second.dtype(), DType::bf16) << a.tensors[i].first;
    EXPECT_EQ(b.tensors[i].second.dtype(), DType::bf16) << b.tensors[i].first;
    EXPECT_EQ(a.tensors[i].second.shape(), b.tensors[i].second.shape());
    EXPECT_EQ(std::memcmp(a.tensors[i].second.raw(), b.tensors[i].second.raw(), a.tensors[i].second.nbytes()), 0)
        << a.tensors[i].first;
  }
  EXPECT_EQ(a.config, b.config);  // config.json survives as written by transformers
  // Sharded export writes an index that transformers' loader reads.
  const std::string sharded = (dir_ / "sharded").string();
  ASSERT_EQ(run("convert lethe-to-hf " + ck + " " + sharded + " shard_gb=0.00005"), 0) << err_;
  EXPECT_TRUE(fs::exists(fs::path(sharded) / "model.safetensors.index.json"));
  EXPECT_EQ(read_hf_model(sharded).tensors.size(), a.tensors.size());
  // The output directory is never overwritten.
  EXPECT_EQ(run("convert lethe-to-hf " + ck + " " + back), 1);
  EXPECT_NE(err_.find("already exists"), std::string::npos) << err_;
  EXPECT_EQ(run("convert hf-to-lethe " + kHf + " " + ck), 1);
}

TEST_F(Convert, ImportedModelMatchesTransformersLogits) {
  // Tolerance: transformers computed in f32 from the same bf16 weights; scaled max error 1e-5.
  const HfModel m = read_hf_model(kHf);
  EXPECT_EQ(m.llama.rope_scaling.type, "llama3");
  EXPECT_EQ(m.llama.rope_theta, 500000.0);
  LlamaModel model(m.llama);
  model.set_keep_logits(true);  // the test reads logits() after forward()
  for (const auto& [name, t] : m.tensors) model.params().get(name).copy_from(t);
  const auto ref = SafetensorsFile::open(kHf + "/reference.safetensors");
  const Tensor ids = ref.tensor("input_ids");
  Tensor tgt = Tensor::zeros(ids.shape(), DType::i32);
  model.forward(ids, tgt);
  EXPECT_LE(test::scaled_err(model.logits(), ref.tensor("logits").reshape(model.logits().shape())), 1e-5);
}

TEST_F(Convert, TrainedCheckpointExportsAsF32OrCast) {
  const std::string ck = (dir_ / "ck").string();
  ASSERT_EQ(run("convert hf-to-lethe " + kHf + " " + ck), 0) << err_;
  const std::string f32 = (dir_ / "f32").string();
  ASSERT_EQ(run("convert lethe-to-hf " + ck + " " + f32 + " dtype=f32"), 0) << err_;
  const HfModel m = read_hf_model(f32);
  EXPECT_EQ(m.tensors[0].second.dtype(), DType::f32);
  EXPECT_EQ(m.config["torch_dtype"], "float32");
  EXPECT_EQ(run("convert lethe-to-hf " + ck + " " + (dir_ / "x").string() + " dtype=int8"), 1);
  EXPECT_NE(err_.find("dtype 'int8'"), std::string::npos) << err_;
}

TEST_F(Convert, MalformedModelDirectoriesAreRejected) {
  auto expect_fail = [&](const std::string& src, const std::string& needle) {
    const std::string out = (dir_ / "out_ck").string();
    EXPECT_EQ(run("convert hf-to-lethe " + src + " " + out), 1) << needle;
    EXPECT_NE(err_.find(needle), std::string::npos) << err_;
    EXPECT_FALSE(fs::exists(out)) << "partial output left behind for: " << needle;
  };
  {  // config that disagrees with the tensors
    const std::string d = copy_hf();
    json c = json::parse(std::ifstream(d + "/config.json"));
    c["intermediate_size"] = 128;
    std::ofstream(d + "/config.json") << c.dump();
    expect_fail(d, "config.json implies [128,64]");
    fs::remove_all(d);
  }
  {  // unsupported features
    const std::string d = copy_hf();
    json c = json::parse(std::ifstream(d + "/config.json"));
    c["attention_bias"] = true;
    std::ofstream(d + "/config.json") << c.dump();
    expect_fail(d, "attention_bias = true is not supported");
    c["attention_bias"] = false;
    c["model_type"] = "gpt2";
    std::ofstream(d + "/config.json") << c.dump();
    expect_fail(d, "model_type 'gpt2' is not supported");
    fs::remove_all(d);
  }
  {  // index pointing at a tensor that the shard lacks, and a shard outside the directory
    const std::string d = copy_hf();
    json idx = json::parse(std::ifstream(d + "/model.safetensors.index.json"));
    idx["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors";
    std::ofstream(d + "/model.safetensors.index.json") << idx.dump();
    expect_fail(d, "'model.norm.weight' is missing");
    idx["weight_map"]["model.norm.weight"] = "../../elsewhere.safetensors";
    std::ofstream(d + "/model.safetensors.index.json") << idx.dump();
    expect_fail(d, "is not a plain file name");
    fs::remove_all(d);
  }
  {  // a truncated shard
    const std::string d = copy_hf();
    const fs::path s = fs::path(d) / "model-00002-of-00003.safetensors";
    fs::resize_file(s, fs::file_size(s) - 100);
    expect_fail(d, "model-00002-of-00003.safetensors");
    fs::remove_all(d);
  }
  {  // an extra tensor the config does not explain
    const std::string d = copy_hf();
    fs::remove(fs::path(d) / "model.safetensors.index.json");
    const HfModel m = read_hf_model(kHf);
    auto t = m.tensors;
    t.emplace_back("model.layers.2.mlp.up_proj.weight", test::randn({4, 4}, DType::bf16, 1));
    for (const auto& e : fs::directory_iterator(d))
      if (e.path().extension() == ".safetensors") fs::remove(e.path());
    write_safetensors(d + "/model.safetensors", t);
    expect_fail(d, "unexpected tensor 'model.layers.2.mlp.up_proj.weight'");
    fs::remove_all(d);
  }
  expect_fail((dir_ / "nowhere").string(), "not a directory");
}

}  // namespace
}  // namespace lethe
