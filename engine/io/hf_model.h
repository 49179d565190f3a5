// Hugging Face model directories: config.json (LlamaForCausalLM / MistralForCausalLM) and
// safetensors weights, one file or sharded with model.safetensors.index.json. Names and
// the q/k layout are transformers' own, which lethe uses natively, so import and export
// move tensors without touching their bytes.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
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
HfModel read_hf_model(const std::string& dir);

// Writes config.json and the tensors: one model.safetensors, or shards of at most
// shard_bytes with model.safetensors.index.json. `dir` must not exist yet.
void write_hf_model(const std::string& dir, const nlohmann::json& config,
                    const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t shard_bytes);

}  // namespace lethe
