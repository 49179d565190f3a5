// One entry point for "a model" on the command line: a transformers directory
// (config.json + safetensors), a lethe checkpoint, or a run directory (its newest
// checkpoint).
//
// ModelSource opens one without reading its weights; load_weights then streams them into a
// model one tensor at a time, so the host memory a load needs beyond the model is a few
// copies of the largest tensor (the stored tensor, its conversion, this rank's block), not
// the whole model: a Llama-2-7B is 13.5 GB in bf16, its largest tensor 262 MB.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/model/llama.h"

namespace lethe {

class Checkpoint;
class HfModelFiles;
struct RunOptimizer;

class ModelSource {
 public:
  // Errors name the path: no such model, a config or header that does not describe a
  // Llama, a missing or misshapen weight. No weight is read.
  static ModelSource open(const std::string& path);
  // The config alone (config.json, or the newest checkpoint's manifest), read without
  // checking the weights: for sizing a run before it starts.
  static LlamaConfig peek_config(const std::string& path);
  const std::string& path() const { return path_; }
  const LlamaConfig& config() const { return config_; }
  // Weight `name` (a llama_param_specs name) whole, in its stored dtype.
  Tensor read(const std::string& name) const;
  // Its box [offset, offset + shape), reading only what the box needs where the format
  // allows (a safetensors byte range per row; a checkpoint's hyperslabs).
  Tensor read_block(const std::string& name, const std::vector<int64_t>& offset, const Shape& shape) const;

 private:
  std::string path_;
  LlamaConfig config_;
  std::shared_ptr<const HfModelFiles> hf_;
  std::shared_ptr<const Checkpoint> checkpoint_;
};

// Reads every weight of `src` into `model` (its tensor-parallel block on a grid), one at a
// time, converting to the model's dtype. The model's config must be src's (shapes are
// checked). Returns the digest of the weights as stored (weights_sha256's definition). On a
// grid of several ranks it is collective: world rank 0 reads every weight whole and hashes
// it, the others read only their blocks (1/tp of each split weight), and every rank returns
// rank 0's digest.
// With `master` (the optimizer over this model, created before the load) the optimizer's own
// copy of the weights follows: under bf16 each weight sets its fp32 master to the stored
// value (the model holds its bf16 rounding, on a device from the load on, in the CPU
// emulation from the first forward; the updates start from the value itself); under f32
// the copy ZeRO-1 keeps is refreshed from the loaded model.
std::string load_weights(LlamaModel& model, const ModelSource& src, RunOptimizer* master = nullptr);

// A model made of src's first layers only (src's config with fewer n_layers; the
// embedding, final norm and head as stored): its weights, by name. For a frozen reference
// read at an inner layer (RMU's retain term), which then need not hold the layers after it.
void load_first_layers(LlamaModel& model, const ModelSource& src);

// Digest of a model's current parameters: SHA-256 over (name, shape, dtype, bytes) of every
// weight, in order.
std::string weights_sha256(const ParamSet& params);

// Every weight in memory at once, for tools that need them together (conversion, tests).
struct LoadedModel {
  std::string path;
  LlamaConfig config;
  std::vector<std::pair<std::string, Tensor>> weights;
  std::string sha256;  // as load_weights returns it
};
LoadedModel load_model(const std::string& path);
// Copies the weights into a one-process model built from the same config (converting dtype).
void assign_weights(LlamaModel& m, const LoadedModel& w);

}  // namespace lethe
