// LlamaConfig <-> YAML (configs/models/*.yaml). Every key is checked; errors name the
// file and the key.
#pragma once
#include <string>
#include <vector>

#include "engine/io/yaml_config.h"
#include "engine/model/llama_config.h"

namespace lethe {

// Reads a model mapping (the whole file, or a `model:` section) and validates it.
LlamaConfig llama_config_from_node(const ConfigNode& node);
LlamaConfig load_llama_config(const std::string& path, const std::vector<std::string>& overrides = {});
std::string llama_config_to_yaml(const LlamaConfig& cfg);

}  // namespace lethe
