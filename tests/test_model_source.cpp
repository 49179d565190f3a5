// Loading a model streams its weights: ModelSource opens a transformers directory or a
// checkpoint without reading weights, and load_weights holds one stored tensor at a time.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/io/checkpoint.h"
#include "engine/io/hf_model.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/model_loader.h"
#include "engine/io/safetensors.h"
#include "engine/optim/run_optimizer.h"
#include "engine/parallel/grid.h"
#include "kernels/host_staged_device.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

// 8 layers, so the whole model is many times its largest tensor (the embedding and the
// MLP matrices: 256 x 64 elements; the model holds about 30 of them).
LlamaConfig config() {
  LlamaConfig c;
  c.name = "stream-test";
  c.vocab_size = 256;
  c.dim = 64;
  c.n_layers = 8;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 256;
  c.max_seq_len = 32;
  return c;
}

class ModelSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lethe_model_source_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // A bf16 transformers directory, sharded into several files.
    LlamaModel m(config());
    m.init_weights(9);
    for (size_t i = 0; i < m.params().size(); ++i) {
      tensors_.emplace_back(m.params().spec(i).name, m.params()[i].to(DType::bf16));
      largest_ = std::max(largest_, size_t(m.params()[i].numel()));
    }
    write_hf_model((dir_ / "hf").string(), hf_config_from_llama(config(), "bfloat16"), tensors_, 40000);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
  size_t largest_ = 0;  // elements of the largest weight
};

TEST_F(ModelSourceTest, LoadHoldsOneTensorAtATimeAndDigestsAsAWholeRead) {
  const std::string hf = (dir_ / "hf").string();
  ASSERT_GT(HfModelFiles::open(hf).files().size(), 2u);  // the weights are sharded
  const ModelSource src = ModelSource::open(hf);
  LlamaModel m(src.config());
  size_t total_bf16 = 0;
  for (const auto& [n, t] : tensors_) total_bf16 += t.nbytes();
  // What a load may hold beyond the model: the stored (bf16) tensor being copied; the
  // conversion writes into the parameter itself. Twice that covers any other small buffer,
  // and is 1/15 of what a load of the whole stored model at once would hold.
  const size_t bound = 2 * 2 * largest_;
  ASSERT_LT(4 * bound, total_bf16);
  const size_t before = host_tensor_bytes().in_use;
  reset_host_tensor_peak();
  const std::string sha = load_weights(m, src);
  EXPECT_LE(host_tensor_bytes().peak - before, bound)
      << "largest weight " << largest_ << " elements, whole model " << total_bf16 << " bytes in bf16";
  EXPECT_EQ(host_tensor_bytes().in_use, before);  // nothing kept

  // The same weights and digest as reading every tensor at once.
  const LoadedModel whole = load_model(hf);
  EXPECT_EQ(sha, whole.sha256);
  for (size_t i = 0; i < m.params().size(); ++i)
    EXPECT_EQ(test::scaled_err(m.params()[i], tensors_[i].second), 0.0) << m.params().spec(i).name;
  // The digest is of the stored bytes: a changed weight changes it.
  tensors_[3].second.data<bf16>()[5] = float_to_bf16(1.5f);
  write_hf_model((dir_ / "hf2").string(), hf_config_from_llama(config(), "bfloat16"), tensors_, 40000);
  LlamaModel m2(src.config());
  EXPECT_NE(load_weights(m2, ModelSource::open((dir_ / "hf2").string())), sha);
}

// A frozen reference read at an inner layer (RMU's retain term) holds the first layers
// only: the hidden state there is the whole model's, bit for bit (the same weights and
// the same ops up to that layer), from 3 of the 8 layers' weights.
TEST_F(ModelSourceTest, FirstLayersGiveTheWholeModelsHiddenStates) {
  const ModelSource src = ModelSource::open((dir_ / "hf").string());
  LlamaModel whole(src.config());
  load_weights(whole, src);
  LlamaConfig first = src.config();
  first.n_layers = 3;
  LlamaModel part(first);
  load_first_layers(part, src);
  EXPECT_LT(part.params().size(), whole.params().size());
  const Tensor tok = test::randint({2, 16}, 256, 4);
  const Tensor want = whole.forward_hidden(tok, 2).clone(), got = part.forward_hidden(tok, 2).clone();
  EXPECT_EQ(test::scaled_err(got, want), 0.0);
  // Anything but the layer count must be the source's.
  LlamaConfig wider = first;
  wider.ffn_dim = 128;
  LlamaModel other(wider);
  try {
    load_first_layers(other, src);
    ADD_FAILURE() << "a model of another shape was loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must have its config otherwise"), std::string::npos) << e.what();
  }
  LlamaConfig deeper = src.config();
  deeper.n_layers = 9;
  LlamaModel more(deeper);
  EXPECT_THROW(load_first_layers(more, src), Error);
}

// Under the bf16 policy the optimizer's fp32 master starts from the stored f32 weights, not
// their bf16 rounding, whether the model rounds them at the load (on a device, served here
// by the host-staged device) or at its first forward (the CPU emulation): both runs then
// take the same updates.
TEST_F(ModelSourceTest, Bf16MasterStartsFromTheStoredF32Weights) {
  LlamaModel f32(config());
  f32.init_weights(4);
  std::vector<std::pair<std::string, Tensor>> w;
  for (size_t i = 0; i < f32.params().size(); ++i) w.emplace_back(f32.params().spec(i).name, f32.params()[i]);
  write_hf_model((dir_ / "hf32").string(), hf_config_from_llama(config(), "float32"), w, int64_t(1) << 30);
  const ModelSource src = ModelSource::open((dir_ / "hf32").string());
  auto check = [&](Device device) {
    LlamaModel m(src.config(), Precision::bf16, nullptr, device);
    auto grid = ProcessGrid::create(ParallelConfig{});
    RunOptimizer opt(m.params(), m.grads(), OptimConfig{}, *grid, Precision::bf16);
    load_weights(m, src, &opt);
    int64_t rounded = 0;
    for (size_t i = 0; i < m.params().size(); ++i) {
      const Tensor master = to_host(opt.one->master()[i]);
      EXPECT_EQ(test::scaled_err(master, f32.params()[i]), 0.0) << m.params().spec(i).name;
      const Tensor p = to_host(m.params()[i]);
      for (int64_t k = 0; k < p.numel(); ++k)
        rounded += p.data<float>()[k] != f32.params()[i].data<float>()[k];
    }
    return rounded;
  };
  // The CPU emulation holds the stored values until its first forward rounds them.
  EXPECT_EQ(check(Device::cpu), 0);
  ScopedHostStagedDevice device;
  // The device holds their bf16 rounding from the load on (init_weights draws values
  // with more than 8 significant bits: almost every one rounds).
  EXPECT_GT(check(Device::cuda), int64_t(f32.params().flat().numel() / 2));
}

// Opening checks every header before a weight is read: a misshapen weight is refused at
// open, naming the file and the tensor, even when it would be read last.
TEST_F(ModelSourceTest, OpenRefusesAMisshapenWeightBeforeReadingAny) {
  tensors_.back().second = Tensor::zeros({3, 64}, DType::bf16);
  write_hf_model((dir_ / "bad").string(), hf_config_from_llama(config(), "bfloat16"), tensors_, 40000);
  try {
    ModelSource::open((dir_ / "bad").string());
    FAIL() << "a misshapen weight was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(tensors_.back().first), std::string::npos) << msg;
    EXPECT_NE(msg.find("has shape [3,64]"), std::string::npos) << msg;
  }
}

// A file truncated after it was opened: the read names the file and the tensor.
TEST_F(ModelSourceTest, ATruncatedFileIsAnErrorNamingTheTensor) {
  const ModelSource src = ModelSource::open((dir_ / "hf").string());
  std::string victim;
  for (const auto& e : fs::directory_iterator(dir_ / "hf"))
    if (e.path().extension() == ".safetensors" && (victim.empty() || e.path().string() > victim))
      victim = e.path().string();
  fs::resize_file(victim, fs::file_size(victim) / 2);
  LlamaModel m(src.config());
  try {
    load_weights(m, src);
    FAIL() << "a truncated file was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(victim), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("read error"), std::string::npos) << e.what();
  }
}

// A tensor-parallel rank reads its block of a weight without the rest: a row range in one
// read, a column range row by row; the block equals the whole tensor's box bit for bit, and
// only its bytes are read.
TEST_F(ModelSourceTest, BlocksAreTheWholeTensorsBoxAndReadOnlyTheirBytes) {
  const std::string hf = (dir_ / "hf").string();
  const ModelSource src = ModelSource::open(hf);
  const std::string name = "model.layers.3.mlp.gate_proj.weight";  // [256, 64] bf16
  const Tensor whole = src.read(name);
  ASSERT_EQ(whole.shape(), (Shape{256, 64}));
  struct Box {
    std::vector<int64_t> offset;
    Shape shape;
  };
  for (const Box& b : {Box{{64, 0}, {64, 64}}, Box{{0, 16}, {256, 16}}, Box{{100, 5}, {7, 3}}, Box{{255, 63}, {1, 1}}}) {
    const uint64_t before = SafetensorsFile::bytes_read();
    const Tensor t = src.read_block(name, b.offset, b.shape);
    EXPECT_EQ(SafetensorsFile::bytes_read() - before, uint64_t(shape_numel(b.shape)) * 2) << shape_str(b.shape);
    ASSERT_EQ(t.shape(), b.shape);
    ASSERT_EQ(t.dtype(), DType::bf16);
    for (int64_t r = 0; r < b.shape[0]; ++r)
      for (int64_t c = 0; c < b.shape[1]; ++c)
        ASSERT_EQ(t.data<bf16>()[r * b.shape[1] + c].bits,
                  whole.data<bf16>()[(b.offset[0] + r) * 64 + b.offset[1] + c].bits)
            << shape_str(b.shape) << " at " << r << ", " << c;
  }
  // 1-D: a norm's range.
  const Tensor norm = src.read("model.norm.weight"), part = src.read_block("model.norm.weight", {10}, {20});
  for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(part.data<bf16>()[i].bits, norm.data<bf16>()[10 + i].bits);
  // Outside the tensor: refused, naming the file's tensor.
  try {
    src.read_block(name, {200, 0}, {64, 64});
    FAIL() << "a block past the last row was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("outside"), std::string::npos) << e.what();
  }
  EXPECT_THROW(src.read_block(name, {0}, {64}), Error);  // a box of the wrong rank

  // A lethe checkpoint's weights read in blocks the same way (its hyperslabs).
  LlamaModel m(src.config());
  load_weights(m, src);
  std::string ck;
  {
    CheckpointWriter w(dir_.string(), "ck", 0, false);
    add_params(w, "weights", m.params());
    w.manifest()["model"] = llama_config_to_json(m.config());
    ck = w.commit();
  }
  const ModelSource cks = ModelSource::open(ck);
  const Tensor cw = cks.read(name), cb = cks.read_block(name, {0, 16}, {256, 16});
  for (int64_t r = 0; r < 256; ++r)
    for (int64_t c = 0; c < 16; ++c) ASSERT_EQ(cb.data<float>()[r * 16 + c], cw.data<float>()[r * 64 + 16 + c]);
}

}  // namespace
}  // namespace lethe
