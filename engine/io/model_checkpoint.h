// Model-level checkpoint content: ParamSets (weights, optimizer moments) as checkpoint
// groups, and LlamaConfig as manifest JSON.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/io/checkpoint.h"
#include "engine/model/llama_config.h"
#include "engine/model/param_set.h"
#include "engine/optim/sharded_optimizer.h"

namespace lethe {

// Each tensor as a slice of its whole shape (ParamSpec::full_shape / offsets), so a set
// held by one tp rank writes its block. `keep` chooses which tensors this rank writes
// (under tp only one rank writes a replicated tensor).
void add_params(CheckpointWriter& w, const std::string& group, const ParamSet& set,
                const std::function<bool(const ParamSpec&)>& keep = nullptr);
// Every tensor of `set` must be present in the group with the same whole shape; extra
// tensors are an error too (a different model). Reads this set's block of each, whatever
// layout wrote it, converted to the set's dtype.
void load_params(const Checkpoint& c, const std::string& group, ParamSet& set);

// ZeRO-1 optimizer moments: `buf` is a ShardedOptimizer's m() or v(), covering its
// pieces(). Each piece is written as at most three boxes of its parameter's whole shape
// (a partial row, whole rows, a partial row), so any later layout reads it back. keep:
// as for add_params.
void add_optimizer_shard(CheckpointWriter& w, const std::string& group, const ShardedOptimizer& opt,
                         const Tensor& buf, const ParamSet& params,
                         const std::function<bool(const ParamSpec&)>& keep = nullptr);
void load_optimizer_shard(const Checkpoint& c, const std::string& group, const ShardedOptimizer& opt, Tensor& buf,
                          const ParamSet& params);

nlohmann::json llama_config_to_json(const LlamaConfig& c);
// `where` labels errors (the manifest's path).
LlamaConfig llama_config_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace lethe
