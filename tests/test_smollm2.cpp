// A real pretrained model: SmolLM2-135M-Instruct (GGUF Q4_1) loaded by lethe matches
// transformers' own loading of the same file (tools/golden/make_smollm2_golden.py):
//   last-position logits: max |diff| <= 2e-5 * max |logit| (measured 3.0e-6)
//   log p(next token) at every position: |diff| <= 1e-4 (measured 1.0e-5)
//   greedy next token: equal wherever transformers' top-2 margin exceeds 1e-2
//   perplexity on Austen prose (1023 tokens, seq 128): within 1e-4 relative
//   decoded text of every prompt: identical to transformers' tokenizer.decode
// Skipped with a reason when the GGUF is absent (tools/models/fetch_smollm2.sh fetches it).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/data/detokenizer.h"
#include "engine/eval/nll.h"
#include "engine/io/checkpoint.h"
#include "engine/io/gguf.h"
#include "engine/io/safetensors.h"
#include "engine/io/sha256.h"
#include "engine/model/llama.h"
#include "kernels/cross_entropy.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string golden(const std::string& f) { return std::string(LETHE_SOURCE_DIR) + "/tests/golden/smollm2/" + f; }

std::string gguf_path() {
  if (const char* p = std::getenv("LETHE_SMOLLM2_GGUF")) return p;
  return std::string(LETHE_SOURCE_DIR) + "/models/smollm2-135m-instruct.gguf";
}

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(gguf_path())) return;
    file_ = std::make_unique<GgufFile>(GgufFile::open(gguf_path()));
    model_ = std::make_unique<LlamaModel>(file_->llama_config());
    model_->set_keep_logits(true);  // the tests read logits() after forward()
    for (auto& [name, t] : file_->llama_weights()) model_->params().get(name).copy_from(t);
  }
  static void TearDownTestSuite() {
    model_.reset();
    file_.reset();
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << gguf_path() << " not found; run tools/models/fetch_smollm2.sh";
    const auto fx = SafetensorsFile::open(golden("prompts.safetensors"));
    ASSERT_EQ(to_hex(sha256_file(gguf_path())), fx.metadata().at("gguf_sha256")) << "not the GGUF the fixture was made from";
  }
  static std::unique_ptr<GgufFile> file_;
  static std::unique_ptr<LlamaModel> model_;
};
std::unique_ptr<GgufFile> SmolLM2::file_;
std::unique_ptr<LlamaModel> SmolLM2::model_;

TEST_F(SmolLM2, ConfigIsSmolLM2) {
  const LlamaConfig c = model_->config();
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.dim, 576);
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_TRUE(c.tie_embeddings);
}

TEST_F(SmolLM2, LogitsMatchTransformers) {
  const auto fx = SafetensorsFile::open(golden("prompts.safetensors"));
  const int n = int(json::parse(fx.metadata().at("prompts")).size());
  const int64_t V = model_->config().vocab_size;
  for (int p = 0; p < n; ++p) {
    const Tensor ids = fx.tensor("ids." + std::to_string(p));
    const int64_t T = ids.numel();
    Tensor tok = ids.reshape({1, T}), tgt = Tensor::empty({1, T}, DType::i32);
    for (int64_t t = 0; t < T; ++t) tgt.data<int32_t>()[t] = t + 1 < T ? ids.data<int32_t>()[t + 1] : ops::kIgnoreIndex;
    model_->forward(tok, tgt);
    const Tensor last = model_->logits().view((T - 1) * V, {V});
    EXPECT_LE(test::scaled_err(last, fx.tensor("last_logits." + std::to_string(p))), 2e-5) << "prompt " << p;
    const Tensor ref_lp = fx.tensor("next_logprob." + std::to_string(p));
    for (int64_t t = 0; t + 1 < T; ++t)
      EXPECT_NEAR(model_->logprobs().data<float>()[t], ref_lp.data<float>()[t], 1e-4) << "prompt " << p << " pos " << t;
    const Tensor ref_arg = fx.tensor("argmax." + std::to_string(p));
    for (int64_t t = 0; t < T; ++t) {
      const float* row = model_->logits().data<float>() + t * V;
      const int64_t best = std::max_element(row, row + V) - row;
      if (best == ref_arg.data<int32_t>()[t]) continue;
      EXPECT_LT(std::abs(row[best] - row[ref_arg.data<int32_t>()[t]]), 1e-2) << "prompt " << p << " pos " << t;
    }
  }
}

TEST_F(SmolLM2, PerplexityOnProseMatchesTransformers) {
  const json ref = json::parse(std::ifstream(golden("prose.json")));
  const TokenDataset ds = load_token_dataset(golden("prose.h5"), model_->config().vocab_size);
  const NllResult r = evaluate_nll(*model_, ds, ref["seq_len"].get<int64_t>(), 4);
  EXPECT_EQ(r.tokens, ref["tokens"].get<int64_t>());
  EXPECT_NEAR(r.perplexity(), ref["perplexity"].get<double>(), 1e-4 * ref["perplexity"].get<double>());
  EXPECT_LT(r.perplexity(), 100.0);  // sane for English prose at this context length
}

TEST_F(SmolLM2, DecodeMatchesTransformersTokenizer) {
  const auto fx = SafetensorsFile::open(golden("prompts.safetensors"));
  const auto decoded = json::parse(fx.metadata().at("decoded"));
  const GgufTokenizer tk = file_->tokenizer();
  const Detokenizer d(tk.model, tk.tokens);
  for (size_t p = 0; p < decoded.size(); ++p) {
    const Tensor ids = fx.tensor("ids." + std::to_string(p));
    const std::vector<int32_t> v(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
    EXPECT_EQ(d.decode(v), decoded[p].get<std::string>()) << "prompt " << p;
  }
  EXPECT_THROW(d.decode({int32_t(tk.tokens.size())}), Error);
}

TEST_F(SmolLM2, ConvertedCheckpointCarriesWeightsAndTokenizer) {
  const fs::path out = fs::temp_directory_path() / ("lethe_smol_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const std::string cmd = std::string(LETHE_BIN) + " convert gguf-to-lethe " + gguf_path() + " " + out.string() +
                          " >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const Checkpoint c = Checkpoint::open(out.string());
  const json tok = json::parse(c.read_file("tokenizer.json"));
  const Detokenizer d(tok["model"].get<std::string>(), tok["tokens"].get<std::vector<std::string>>());
  const auto fx = SafetensorsFile::open(golden("prompts.safetensors"));
  const Tensor ids = fx.tensor("ids.0");
  EXPECT_EQ(d.decode(std::vector<int32_t>(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel())),
            json::parse(fx.metadata().at("decoded"))[0].get<std::string>());
  const Tensor emb = c.read("weights", "model.embed_tokens.weight", DType::f32);
  EXPECT_EQ(test::values(emb), test::values(model_->params().get("model.embed_tokens.weight")));
  fs::remove_all(out);
}

}  // namespace
}  // namespace lethe
