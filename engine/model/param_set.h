// A named set of tensors laid out in one flat buffer. Parameters, gradients and optimizer
// moments share the layout, so clipping, optimizer steps and (later) all-reduce and
// ZeRO sharding work on one contiguous range.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/core/tensor.h"

namespace lethe {

struct ParamSpec {
  std::string name;  // transformers' name, e.g. model.layers.0.self_attn.q_proj.weight
  Shape shape;       // this rank's shape (the whole tensor without tensor parallelism)
  // Tensor parallelism: the whole tensor's shape (empty: same as shape) and where this
  // rank's block starts along shard_dim; shard_dim -1 means every tp rank holds it whole.
  Shape global_shape = {};
  int shard_dim = -1;
  int64_t shard_offset = 0;
  const Shape& full_shape() const { return global_shape.empty() ? shape : global_shape; }
  bool sharded() const { return shard_dim >= 0; }
  // Offset of this rank's block in the whole tensor, per dimension.
  std::vector<int64_t> offsets() const {
    std::vector<int64_t> o(shape.size(), 0);
    if (sharded()) o[size_t(shard_dim)] = shard_offset;
    return o;
  }
};

class ParamSet {
 public:
  ParamSet() = default;
  ParamSet(const std::vector<ParamSpec>& specs, DType dtype, Device device = Device::cpu);

  size_t size() const { return specs_.size(); }
  const ParamSpec& spec(size_t i) const { return specs_[i]; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  Tensor& operator[](size_t i) { return views_[i]; }
  const Tensor& operator[](size_t i) const { return views_[i]; }
  // Throws naming the parameter when absent.
  Tensor& get(const std::string& name);
  const Tensor& get(const std::string& name) const;
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  Tensor& flat() { return flat_; }
  const Tensor& flat() const { return flat_; }
  int64_t numel() const { return flat_.defined() ? flat_.numel() : 0; }
  void zero() { if (flat_.defined()) flat_.zero_(); }

 private:
  std::vector<ParamSpec> specs_;
  std::vector<Tensor> views_;
  std::unordered_map<std::string, size_t> index_;
  Tensor flat_;
};

}  // namespace lethe
