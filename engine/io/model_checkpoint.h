// Model-level checkpoint content: ParamSets (weights, optimizer moments) as checkpoint
// groups, and LlamaConfig as manifest JSON.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "engine/io/checkpoint.h"
#include "engine/model/llama_config.h"
#include "engine/model/param_set.h"

namespace lethe {

void add_params(CheckpointWriter& w, const std::string& group, const ParamSet& set);
// Every tensor of `set` must be present in the group with the same shape; extra tensors
// are an error too (a different model). Converts to the set's dtype.
void load_params(const Checkpoint& c, const std::string& group, ParamSet& set);

nlohmann::json llama_config_to_json(const LlamaConfig& c);
// `where` labels errors (the manifest's path).
LlamaConfig llama_config_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace lethe
