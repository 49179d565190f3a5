// GGUF reading against fixtures written by llama.cpp's gguf-py
// (tools/golden/make_gguf_fixtures.py): metadata of every type, the Llama config and
// tokenizer, bit-exact dequantisation (F16, BF16, Q8_0, Q4_0, Q4_1 are exact in f32, so
// the tolerance is zero), q/k rows put back into transformers' layout, and malformed
// files, made here by patching copies of the fixtures, rejected with the file and the
// key or tensor named.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "engine/io/gguf.h"
#include "engine/io/safetensors.h"
#include "engine/model/llama.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

const std::string kDir = std::string(LETHE_SOURCE_DIR) + "/tests/golden/gguf/";

std::string tmp(const std::string& name) {
  return (fs::temp_directory_path() / ("lethe_gguf_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(b.data(), std::streamsize(b.size()));
}

template <typename T>
std::string le(T v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(T));  // little-endian host
}
template <typename T>
void put(std::string& b, size_t pos, T v) {
  ASSERT_LE(pos + sizeof(T), b.size());
  std::memcpy(b.data() + pos, &v, sizeof(T));
}

size_t find_once(const std::string& b, const std::string& needle) {
  const size_t p = b.find(needle);
  EXPECT_NE(p, std::string::npos) << "fixture lacks the bytes being patched";
  EXPECT_EQ(b.find(needle, p + 1), std::string::npos) << "patch target is ambiguous";
  return p;
}

// Offset of a key's value-type field: just after the key string.
size_t key_type_pos(const std::string& b, const std::string& key) {
  return find_once(b, le<uint64_t>(key.size()) + key) + 8 + key.size();
}

struct InfoPos {
  size_t n_dims, dims, type, offset;
};
InfoPos tensor_info_pos(const std::string& b, const std::string& name, uint32_t n_dims) {
  const size_t p = find_once(b, le<uint64_t>(name.size()) + name + le<uint32_t>(n_dims));
  InfoPos r;
  r.n_dims = p + 8 + name.size();
  r.dims = r.n_dims + 4;
  r.type = r.dims + 8 * n_dims;
  r.offset = r.type + 4;
  return r;
}

// fn must throw a lethe::Error whose message names the file and contains every needle.
void expect_error(const std::function<void()>& fn, const std::string& path, std::vector<std::string> needles) {
  try {
    fn();
    FAIL() << "expected an error containing '" << needles[0] << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// Writes `bytes` to a temporary file and expects GgufFile::open to fail naming it.
void expect_open_error(const std::string& name, const std::string& bytes, std::vector<std::string> needles) {
  const std::string p = tmp(name);
  write_bytes(p, bytes);
  expect_error([&] { GgufFile::open(p); }, p, std::move(needles));
  fs::remove(p);
}

void expect_bit_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), DType::f32) << what;
  ASSERT_EQ(want.dtype(), DType::f32) << what;
  EXPECT_EQ(std::memcmp(got.raw(), want.raw(), got.nbytes()), 0) << what << " differs from gguf-py";
}

TEST(Gguf, MetadataOfEveryType) {
  const auto f = GgufFile::open(kDir + "llama_tiny.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.keys().front(), "general.architecture");
  EXPECT_EQ(f.get_string("general.architecture"), "llama");

  const std::pair<const char*, GgufType> types[] = {
      {"test.u8", GgufType::u8},     {"test.i8", GgufType::i8},          {"test.u16", GgufType::u16},
      {"test.i16", GgufType::i16},   {"test.u32", GgufType::u32},        {"test.i32", GgufType::i32},
      {"test.f32", GgufType::f32},   {"test.bool", GgufType::boolean},   {"test.string", GgufType::string},
      {"test.u64", GgufType::u64},   {"test.i64", GgufType::i64},        {"test.f64", GgufType::f64},
      {"test.arr_i32", GgufType::array}};
  for (const auto& [key, t] : types) EXPECT_EQ(f.type(key), t) << key;
  EXPECT_EQ(f.get_int("test.u8"), 200);
  EXPECT_EQ(f.get_int("test.i8"), -100);
  EXPECT_EQ(f.get_int("test.u16"), 60000);
  EXPECT_EQ(f.get_int("test.i16"), -30000);
  EXPECT_EQ(f.get_int("test.u32"), 4000000000);
  EXPECT_EQ(f.get_int("test.i32"), -2000000000);
  EXPECT_EQ(f.get_int("test.u64"), (int64_t(1) << 40) + 3);
  EXPECT_EQ(f.get_int("test.i64"), -(int64_t(1) << 40));
  EXPECT_EQ(f.get_float("test.f32"), 0.25);
  EXPECT_EQ(f.get_float("test.f64"), 0.1);  // float64 survives exactly
  EXPECT_EQ(f.get_float("test.i32"), -2e9);  // integers widen
  EXPECT_TRUE(f.get_bool("test.bool"));
  EXPECT_EQ(f.get_string("test.string"), "h\xc3\xa9llo");  // UTF-8 bytes as stored

  EXPECT_EQ(f.array_type("test.arr_i32"), GgufType::i32);
  EXPECT_EQ(f.get_int_array("test.arr_i32"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.get_int_array("test.arr_u8"), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(f.get_float_array("test.arr_f32"), (std::vector<double>{0.5, -1.5}));
  EXPECT_EQ(f.get_float_array("test.arr_f64"), (std::vector<double>{0.1, 2.0}));
  EXPECT_EQ(f.get_float_array("test.arr_i32"), (std::vector<double>{1, -2, 3}));
  EXPECT_EQ(f.get_string_array("test.arr_str"), (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(f.array_type("test.arr_bool"), GgufType::boolean);
  // Arrays of arrays are parsed past (the tensor infos after the last one read correctly)
  // but not kept.
  EXPECT_EQ(f.array_type("test.arr_nested"), GgufType::array);
  EXPECT_TRUE(f.has("test.arr_nested"));
  EXPECT_FALSE(f.has("test.absent"));
}

TEST(Gguf, WrongMetadataTypeNamesTheKey) {
  const std::string p = kDir + "llama_tiny.gguf";
  const auto f = GgufFile::open(p);
  expect_error([&] { f.get_int("test.string"); }, p, {"'test.string'", "string", "not an integer"});
  expect_error([&] { f.get_int("test.f32"); }, p, {"'test.f32'", "float32"});
  expect_error([&] { f.get_int("test.u64_big"); }, p, {"'test.u64_big'", "does not fit int64"});
  expect_error([&] { f.get_int("test.arr_i32"); }, p, {"'test.arr_i32'", "array of int32"});
  expect_error([&] { f.get_string("test.u8"); }, p, {"'test.u8'", "uint8", "not a string"});
  expect_error([&] { f.get_bool("test.u8"); }, p, {"'test.u8'", "not a bool"});
  expect_error([&] { f.get_float("test.string"); }, p, {"'test.string'", "not a number"});
  expect_error([&] { f.get_string_array("test.arr_i32"); }, p, {"'test.arr_i32'", "not an array of strings"});
  expect_error([&] { f.get_int_array("test.arr_f32"); }, p, {"'test.arr_f32'", "array of float32"});
  expect_error([&] { f.get_float_array("test.arr_str"); }, p, {"'test.arr_str'"});
  expect_error([&] { f.get_int_array("test.arr_nested"); }, p, {"'test.arr_nested'", "array of array"});
  expect_error([&] { f.array_type("test.u8"); }, p, {"'test.u8'", "not an array"});
  expect_error([&] { f.get_int("test.absent"); }, p, {"no metadata key 'test.absent'"});
  expect_error([&] { f.tensor_f32("absent"); }, p, {"no tensor named 'absent'"});
}

TEST(Gguf, LlamaConfigFromMetadata) {
  const LlamaConfig c = GgufFile::open(kDir + "llama_tiny.gguf").llama_config();
  EXPECT_EQ(c.name, "tiny-llama");
  EXPECT_EQ(c.vocab_size, 32);
  EXPECT_EQ(c.dim, 32);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 0);  // rope.dimension_count == dim / heads: the default
  EXPECT_EQ(c.hd(), 8);  // 8, not 4: with 4 the permutation is its own inverse
  EXPECT_EQ(c.ffn_dim, 24);
  EXPECT_EQ(c.norm_eps, double(1e-5f));  // stored as float32
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.max_seq_len, 64);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_FALSE(c.tie_embeddings);  // output.weight is present
}

TEST(Gguf, Tokenizer) {
  const GgufTokenizer t = GgufFile::open(kDir + "llama_tiny.gguf").tokenizer();
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "default");
  ASSERT_EQ(t.tokens.size(), 32u);
  EXPECT_EQ(t.tokens[0], "<unk>");
  EXPECT_EQ(t.tokens[4], "a");
  EXPECT_EQ(t.tokens[31], "abc");
  ASSERT_EQ(t.scores.size(), 32u);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(t.scores[i], -0.5f * float(i));
  ASSERT_EQ(t.token_types.size(), 32u);
  EXPECT_EQ(t.token_types[0], 2);  // unknown
  EXPECT_EQ(t.token_types[1], 3);  // control
  EXPECT_EQ(t.token_types[10], 1);  // normal
  EXPECT_EQ(t.merges, (std::vector<std::string>{"a b", "ab c"}));
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_EQ(t.unk_id, 0);
  EXPECT_EQ(t.pad_id, 3);
  expect_error([] { GgufFile::open(kDir + "quant_f16.gguf").tokenizer(); }, kDir + "quant_f16.gguf",
               {"tokenizer.ggml.tokens"});
}

TEST(Gguf, DequantisationIsBitExact) {
  const auto want = SafetensorsFile::open(kDir + "quant_expected.safetensors");
  const std::pair<const char*, uint32_t> files[] = {
      {"f16", 1}, {"bf16", 30}, {"q8_0", 8}, {"q4_0", 2}, {"q4_1", 3}};
  for (const auto& [name, type] : files) {
    const auto f = GgufFile::open(kDir + "quant_" + name + ".gguf");
    EXPECT_EQ(f.tensor_info("w").type, type) << name;
    EXPECT_EQ(f.tensor_info("w").ne, (std::vector<uint64_t>{256, 4})) << name;
    expect_bit_equal(f.tensor_f32("w"), want.tensor(std::string(name) + ".w"), name);
  }
  // Three dimensions: ne = [32, 3, 2] becomes shape {2, 3, 32}.
  const auto q8 = GgufFile::open(kDir + "quant_q8_0.gguf");
  EXPECT_EQ(q8.tensor_info("w3").shape(), (Shape{2, 3, 32}));
  expect_bit_equal(q8.tensor_f32("w3"), want.tensor("q8_0.w3"), "q8_0.w3");
  // general.alignment = 64 moves the data section.
  const auto q41 = GgufFile::open(kDir + "quant_q4_1.gguf");
  EXPECT_EQ(q41.alignment(), 64u);
  EXPECT_EQ(q41.data_offset() % 64, 0u);
  // The F16/BF16 fixtures hold inf, nan, -0 and f16 subnormals; make sure they were compared.
  const Tensor h = GgufFile::open(kDir + "quant_f16.gguf").tensor_f32("w");
  EXPECT_TRUE(std::isinf(h.data<float>()[2]) && std::isnan(h.data<float>()[4]));
  EXPECT_TRUE(std::signbit(h.data<float>()[1]));
  EXPECT_GT(h.data<float>()[5], 0.0f);
  EXPECT_LT(h.data<float>()[5], 1e-7f);
}

TEST(Gguf, WeightsComeBackInTransformersLayout) {
  const auto f = GgufFile::open(kDir + "llama_tiny.gguf");
  const auto want = SafetensorsFile::open(kDir + "llama_tiny_expected.safetensors");
  const LlamaConfig c = f.llama_config();
  const auto weights = f.llama_weights();
  const auto specs = llama_param_specs(c);
  ASSERT_EQ(weights.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(weights[i].first, specs[i].name);
    expect_bit_equal(weights[i].second, want.tensor(specs[i].name), specs[i].name);
  }
  // The file holds llama.cpp's interleaved rows: GGUF row h*D + 2i + j is transformers'
  // row h*D + j*D/2 + i (LlamaModel.permute). Restated here independently of the reader.
  for (const auto& [g, hf, heads] : {std::tuple{"blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", 4},
                                     std::tuple{"blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2}}) {
    const Tensor raw = f.tensor_f32(g), hf_w = want.tensor(hf);
    const int64_t D = c.hd(), half = D / 2, cols = raw.dim(1);
    ASSERT_EQ(raw.dim(0), heads * D);
    EXPECT_NE(std::memcmp(raw.raw(), hf_w.raw(), raw.nbytes()), 0) << g << ": rows must differ from HF";
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i)
        for (int64_t j = 0; j < 2; ++j)
          EXPECT_EQ(std::memcmp(raw.data<float>() + (h * D + 2 * i + j) * cols,
                                hf_w.data<float>() + (h * D + j * half + i) * cols, size_t(cols) * 4),
                    0)
              << g << " head " << h << " pair " << i << "." << j;
  }
}

TEST(Gguf, TiedQ8ModelWithLlama3Rope) {
  const auto f = GgufFile::open(kDir + "llama_tied_q8.gguf");
  const auto want = SafetensorsFile::open(kDir + "llama_tied_q8_expected.safetensors");
  const LlamaConfig c = f.llama_config();
  EXPECT_TRUE(c.tie_embeddings);  // no output.weight
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.hd(), 8);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_NEAR(c.rope_scaling.factor, 8.0, 1e-5);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  // lethe's frequencies equal llama.cpp's base / rope_freqs to float32 precision.
  const auto mine = ops::rope_inv_freq(c.hd(), c.rope_theta, c.rope_scaling);
  const auto base = ops::rope_inv_freq(c.hd(), c.rope_theta, {});
  const Tensor factors = want.tensor("rope_freqs");
  for (int64_t i = 0; i < c.hd() / 2; ++i) {
    const double theirs = base[i] / factors.data<float>()[i];
    EXPECT_NEAR(mine[i], theirs, 1e-6 * theirs) << "frequency " << i;
  }

  const auto weights = f.llama_weights();
  const auto specs = llama_param_specs(c);
  ASSERT_EQ(weights.size(), specs.size());
  LlamaModel model(c);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(weights[i].first, specs[i].name);
    EXPECT_NE(weights[i].first, "lm_head.weight");
    expect_bit_equal(weights[i].second, want.tensor(specs[i].name), specs[i].name);
    model.params().get(weights[i].first).copy_from(weights[i].second);  // loads as a model
  }
}

// Copies of valid fixtures, patched; each must fail on open naming the file.
TEST(Gguf, MalformedHeadersAreRejected) {
  const std::string tiny = read_bytes(kDir + "llama_tiny.gguf");
  expect_open_error("short.gguf", tiny.substr(0, 3), {"needs 4 bytes", "truncated"});
  expect_open_error("trunc100.gguf", tiny.substr(0, 100), {"metadata count 44 needs more bytes"});
  expect_open_error("trunc.gguf", tiny.substr(0, 1000), {"needs", "truncated"});
  std::string b = tiny;
  b[0] = 'X';
  expect_open_error("magic.gguf", b, {"not a GGUF file"});
  for (uint32_t v : {1u, 4u}) {
    b = tiny;
    put<uint32_t>(b, 4, v);
    expect_open_error("version.gguf", b, {"version " + std::to_string(v), "versions 2 and 3"});
  }
  b = tiny;
  put<uint32_t>(b, 4, 0x03000000u);
  expect_open_error("bigendian.gguf", b, {"big-endian"});
  b = tiny;
  put<uint64_t>(b, 8, uint64_t(1) << 40);
  expect_open_error("ntensors.gguf", b, {"tensor count 1099511627776", "more bytes than the file has"});
  b = tiny;
  put<uint64_t>(b, 16, uint64_t(1) << 40);
  expect_open_error("nkv.gguf", b, {"metadata count 1099511627776"});
  b = tiny;
  put<uint64_t>(b, 24, uint64_t(100) << 30);  // the first key's length: 100 GiB
  expect_open_error("keylen.gguf", b, {"metadata key #0", "string length 107374182400", "past the end"});
  b = tiny;
  put<uint64_t>(b, key_type_pos(b, "general.architecture") + 4, uint64_t(1) << 40);
  expect_open_error("vallen.gguf", b, {"key 'general.architecture'", "string length", "past the end"});
  b = tiny;
  put<uint32_t>(b, key_type_pos(b, "general.architecture"), 13);
  expect_open_error("valtype.gguf", b, {"key 'general.architecture'", "unknown value type 13"});
  b = tiny;
  put<uint32_t>(b, key_type_pos(b, "test.arr_i32") + 4, 13);
  expect_open_error("elemtype.gguf", b, {"key 'test.arr_i32'", "unknown value type 13"});
  b = tiny;
  put<uint64_t>(b, key_type_pos(b, "tokenizer.ggml.scores") + 8, uint64_t(1) << 24);
  expect_open_error("arrlen.gguf", b, {"key 'tokenizer.ggml.scores'", "array of 16777216 float32"});
  b = tiny;
  b.replace(find_once(b, "test.u8"), 7, "test.i8");
  expect_open_error("dupkey.gguf", b, {"key 'test.i8' appears twice"});
}

TEST(Gguf, MalformedTensorInfosAreRejected) {
  const std::string q8 = read_bytes(kDir + "quant_q8_0.gguf");
  const InfoPos w = tensor_info_pos(q8, "w", 2), w3 = tensor_info_pos(q8, "w3", 3);
  std::string b = q8;
  put<uint32_t>(b, w.n_dims, 5);
  expect_open_error("ndims.gguf", b, {"tensor 'w' has 5 dimensions", "1 to 4"});
  b = q8;
  put<uint64_t>(b, w.dims, uint64_t(1) << 40);
  put<uint64_t>(b, w.dims + 8, uint64_t(1) << 40);
  expect_open_error("overflow.gguf", b, {"tensor 'w'", "overflow"});
  b = q8;
  put<uint64_t>(b, w.dims + 8, (uint64_t(100) << 30) / 272);  // 100 GiB of Q8_0 rows of 256
  expect_open_error("huge.gguf", b, {"tensor 'w'", "runs past the end of the data section"});
  b = q8;
  put<uint64_t>(b, w.offset, uint64_t(1) << 50);
  expect_open_error("offset.gguf", b, {"tensor 'w'", "offset 1125899906842624 is past the end"});
  b = q8;
  put<uint64_t>(b, w3.offset, 8);
  expect_open_error("align.gguf", b, {"tensor 'w3'", "not a multiple of the alignment 32"});
  b = q8;
  put<uint64_t>(b, w3.offset, 1024);
  expect_open_error("overlap.gguf", b, {"tensors 'w' and 'w3' overlap"});
  b = q8;
  put<uint64_t>(b, w3.dims, 33);
  expect_open_error("block.gguf", b, {"tensor 'w3'", "row length 33", "Q8_0"});
  b = q8;
  put<uint32_t>(b, w.type, 200);
  expect_open_error("ggmltype.gguf", b, {"tensor 'w'", "unknown ggml type 200"});
  // The file ends inside w3's data (its last 64 bytes are 20 of padding, 44 of data).
  expect_open_error("data.gguf", q8.substr(0, q8.size() - 64), {"tensor 'w3'", "runs past the end"});
  b = q8;
  put<uint64_t>(b, w3.n_dims - 2 - 8, 1);  // w3's name length 2 -> 1: it reads as "w" again
  expect_open_error("dupname.gguf", b, {"tensor 'w' appears twice"});
}

TEST(Gguf, UnsupportedGgmlTypeFailsOnRead) {
  std::string b = read_bytes(kDir + "quant_q8_0.gguf");
  put<uint32_t>(b, tensor_info_pos(b, "w", 2).type, 13);  // Q5_K: 4 rows of 256 fit w's bytes
  const std::string p = tmp("q5k.gguf");
  write_bytes(p, b);
  const auto f = GgufFile::open(p);  // the header is valid: metadata stays readable
  EXPECT_EQ(ggml_type_name(f.tensor_info("w").type), "Q5_K");
  expect_error([&] { f.tensor_f32("w"); }, p, {"tensor 'w' has ggml type 13 (Q5_K)", "does not dequantise"});
  EXPECT_EQ(f.tensor_f32("w3").shape(), (Shape{2, 3, 32}));
  fs::remove(p);
}

TEST(Gguf, Version2IsRead) {
  std::string b = read_bytes(kDir + "llama_tiny.gguf");
  put<uint32_t>(b, 4, 2);  // v2 and v3 share the little-endian layout
  const std::string p = tmp("v2.gguf");
  write_bytes(p, b);
  const auto f = GgufFile::open(p);
  EXPECT_EQ(f.version(), 2u);
  const auto want = SafetensorsFile::open(kDir + "llama_tiny_expected.safetensors");
  expect_bit_equal(f.llama_weights()[1].second, want.tensor("model.layers.0.input_layernorm.weight"), "v2");
  fs::remove(p);
}

TEST(Gguf, BadLlamaFilesAreRejected) {
  const std::string tiny = read_bytes(kDir + "llama_tiny.gguf");
  expect_error([] { GgufFile::open(kDir + "quant_f16.gguf").llama_config(); }, kDir + "quant_f16.gguf",
               {"key 'general.architecture' is 'test'"});
  std::string b = tiny;
  b.replace(find_once(b, "llama.block_count"), 17, "llama.block_coun_");
  const std::string p = tmp("bad_llama.gguf");
  write_bytes(p, b);
  expect_error([&] { GgufFile::open(p).llama_config(); }, p, {"key 'llama.block_count' is missing"});
  b = tiny;
  b.replace(find_once(b, "blk.1.ffn_up.weight"), 19, "blk.1.ffn_uq.weight");
  write_bytes(p, b);
  expect_error([&] { GgufFile::open(p).llama_weights(); }, p, {"no counterpart", "'blk.1.ffn_uq.weight'"});
  b = tiny;
  b.replace(find_once(b, "blk.1.attn_norm.weight"), 22, "blk.7.attn_norm.weight");  // only 2 layers
  write_bytes(p, b);
  expect_error([&] { GgufFile::open(p).llama_weights(); }, p, {"'blk.7.attn_norm.weight'"});
  b = tiny;
  put<uint32_t>(b, key_type_pos(b, "llama.feed_forward_length") + 4, 25);
  write_bytes(p, b);
  expect_error([&] { GgufFile::open(p).llama_weights(); }, p,
               {"'blk.0.ffn_gate.weight' is [24,32]", "model.layers.0.mlp.gate_proj.weight [25,32]"});
  b = tiny;
  put<uint32_t>(b, key_type_pos(b, "llama.block_count") + 4, 4000000000u);  // must not size anything
  write_bytes(p, b);
  expect_error([&] { GgufFile::open(p).llama_weights(); }, p,
               {"key 'llama.block_count' is 4000000000", "'blk.2.attn_norm.weight' is missing"});
  b = tiny;
  put<uint32_t>(b, key_type_pos(b, "llama.attention.head_count_kv") + 4, 3);
  write_bytes(p, b);
  expect_error([&] { GgufFile::open(p).llama_config(); }, p, {"n_heads (4) is not divisible by n_kv_heads (3)"});
  // A rope_freqs entry that no Llama-3 scaling produces.
  b = read_bytes(kDir + "llama_tied_q8.gguf");
  const uint64_t off = GgufFile::open(kDir + "llama_tied_q8.gguf").tensor_info("rope_freqs.weight").offset;
  put<float>(b, size_t(off) + 4, 2.0f);  // entry 1 is 1 (unscaled band)
  write_bytes(p, b);
  expect_error([&] { GgufFile::open(p).llama_config(); }, p, {"'rope_freqs.weight' does not match"});
  fs::remove(p);
  expect_error([] { GgufFile::open(tmp("absent.gguf")); }, tmp("absent.gguf"), {"no such file"});
}

TEST(Gguf, TypeNames) {
  EXPECT_EQ(ggml_type_name(0), "F32");
  EXPECT_EQ(ggml_type_name(14), "Q6_K");
  EXPECT_EQ(ggml_type_name(30), "BF16");
  EXPECT_EQ(ggml_type_name(4), "unknown");  // Q4_2, removed from ggml
  EXPECT_STREQ(gguf_type_name(GgufType::f64), "float64");
}

}  // namespace
}  // namespace lethe
