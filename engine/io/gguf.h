// GGUF (llama.cpp's model file), versions 2 and 3, little-endian: "GGUF", version,
// tensor count, key/value count, typed metadata, tensor infos (name, dims innermost
// first, ggml type, offset), then the tensor data from an aligned start. Every count,
// length and offset is checked against the file size before it is used, so a corrupt
// or hostile header fails at once instead of allocating; errors name the file and the
// key or tensor. Tensor data stays on disk until asked for.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/model/llama_config.h"

namespace lethe {

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
const char* gguf_type_name(GgufType t);

// ggml tensor types that lethe dequantises; any other id is named by ggml_type_name.
enum class GgmlType : uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, bf16 = 30 };
std::string ggml_type_name(uint32_t type);  // "Q5_K"; "unknown" for ids ggml does not define

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // GGUF order: ne[0] is the row length
  uint32_t type = 0;         // ggml type id
  uint64_t offset = 0;       // absolute byte offset of the data in the file
  uint64_t nbytes = 0;
  Shape shape() const;       // lethe order: ne reversed, so ne = [in, out] gives {out, in}
};

struct GgufTokenizer {
  std::string model;  // tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" (BPE), ...
  std::string pre;    // tokenizer.ggml.pre: BPE pre-tokenizer name; empty when absent
  std::vector<std::string> tokens;
  std::vector<float> scores;         // empty when the file has none
  std::vector<int32_t> token_types;  // empty when the file has none
  std::vector<std::string> merges;   // empty when the file has none
  int64_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;
};

class GgufFile {
 public:
  // Reads and validates the header; errors name the file and the key or tensor.
  static GgufFile open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }

  // Metadata. Integer getters accept every integer type (and refuse a uint64 above
  // INT64_MAX); float getters also accept integers; bools are only bools. Any other
  // mismatch, or a missing key, is an error naming the key and its actual type.
  std::vector<std::string> keys() const { return key_order_; }  // file order
  bool has(const std::string& key) const { return kv_.count(key) > 0; }
  GgufType type(const std::string& key) const;
  GgufType array_type(const std::string& key) const;  // element type of an array
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;

  // Tensors, in file order.
  std::vector<std::string> tensor_names() const;
  bool has_tensor(const std::string& name) const { return index_.count(name) > 0; }
  const GgufTensorInfo& tensor_info(const std::string& name) const;
  // F32, F16, BF16, Q8_0, Q4_0 and Q4_1 dequantised to f32, shaped as tensor_info().shape().
  Tensor tensor_f32(const std::string& name) const;

  // The model config of a `general.architecture = llama` file (llama.* keys).
  LlamaConfig llama_config() const;
  GgufTokenizer tokenizer() const;
  // Every weight under transformers' name, in llama_param_specs order, f32, with q_proj
  // and k_proj rows put back from llama.cpp's interleaved RoPE order into transformers'
  // rotate_half order. An unknown, missing or misshapen tensor is an error.
  std::vector<std::pair<std::string, Tensor>> llama_weights() const;

 private:
  struct Value {
    GgufType type = GgufType::u8;
    GgufType elem = GgufType::u8;  // element type when type == array
    std::vector<int64_t> ints;     // integers and bools (a uint64 kept as its bits)
    std::vector<double> floats;
    std::vector<std::string> strings;
  };
  friend class GgufParser;

  const Value& value(const std::string& key) const;
  [[noreturn]] void wrong_type(const std::string& key, const char* wanted) const;
  int64_t int_at(const std::string& key, const Value& v, size_t i) const;

  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, Value> kv_;
  std::vector<std::string> key_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace lethe
