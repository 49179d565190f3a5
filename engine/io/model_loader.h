// One entry point for "a model" on the command line: a transformers directory
// (config.json + safetensors), a lethe checkpoint, or a run directory (its newest
// checkpoint). Returns the config, the weights in llama_param_specs order, and a digest
// that identifies the weights in reports.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/model/llama.h"

namespace lethe {

struct LoadedModel {
  std::string path;
  LlamaConfig config;
  std::vector<std::pair<std::string, Tensor>> weights;
  std::string sha256;  // over (name, shape, dtype, bytes) of every weight, in order
};

LoadedModel load_model(const std::string& path);
// Copies the weights into a model built from the same config (converting dtype).
void assign_weights(LlamaModel& m, const LoadedModel& w);
// Digest of a model's current parameters, the same way LoadedModel::sha256 is computed.
std::string weights_sha256(const ParamSet& params);

}  // namespace lethe
