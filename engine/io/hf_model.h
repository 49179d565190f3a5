// Hugging Face model directories: config.json (LlamaForCausalLM / MistralForCausalLM) and
// safetensors weights, one file or sharded with model.safetensors.index.json. Names and
// the q/k layout are transformers' own, which lethe uses natively, so import and export
// move tensors without touching their bytes.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/io/safetensors.h"
#include "engine/model/llama_config.h"

namespace lethe {

struct HfModel {
  nlohmann::json config;  // config.json as found (kept for export)
  LlamaConfig llama;
  std::vector<std::pair<std::string, Tensor>> tensors;  // in llama_param_specs order
  std::vector<std::string> files;                       // safetensors files read
};

// Errors name the file and the key or tensor: unsupported architecture or feature
// (attention bias, sliding window, other activations), missing or extra tensors, shapes
// that disagree with config.json, offsets outside a file.
LlamaConfig llama_config_from_hf(const nlohmann::json& config, const std::string& where);
nlohmann::json hf_config_from_llama(const LlamaConfig& c, const std::string& torch_dtype);
// Every weight read into memory at once (conversion and tests; a model load streams them
// through HfModelFiles).
HfModel read_hf_model(const std::string& dir);

// A transformers directory opened for reading: config.json parsed, and every weight's file,
// shape and dtype checked from the safetensors headers (the errors above), without reading
// any weight. read() then reads one weight, as stored (F32, BF16 or F16).
class HfModelFiles {
 public:
  static HfModelFiles open(const std::string& dir);
  const nlohmann::json& config() const { return config_; }
  const LlamaConfig& llama() const { return llama_; }
  const std::vector<std::string>& files() const { return files_; }  // safetensors files, in first-use order
  Tensor read(const std::string& name) const;
  // The box [offset, offset + shape) of a weight, reading only its bytes (SafetensorsFile::block).
  Tensor read_block(const std::string& name, const std::vector<int64_t>& offset, const Shape& shape) const;

 private:
  std::string dir_;
  nlohmann::json config_;
  LlamaConfig llama_;
  std::vector<std::string> files_;
  std::map<std::string, SafetensorsFile> open_;  // by file name
  std::map<std::string, std::string> file_of_;   // weight name -> file name
};

// Writes config.json and the tensors: one model.safetensors, or shards of at most
// shard_bytes with model.safetensors.index.json. `dir` must not exist yet.
void write_hf_model(const std::string& dir, const nlohmann::json& config,
                    const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t shard_bytes);

}  // namespace lethe
