// A named set of tensors laid out in one flat buffer. Parameters, gradients and optimizer
// moments share the layout, so clipping, optimizer steps and (later) all-reduce and
// ZeRO sharding work on one contiguous range.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
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
  Tensor& operator[](size_t i) {
    wait(i);
    return views_[i];
  }
  const Tensor& operator[](size_t i) const {
    wait(i);
    return views_[i];
  }
  // Throws naming the parameter when absent.
  Tensor& get(const std::string& name);
  const Tensor& get(const std::string& name) const;
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  Tensor& flat() {
    wait(kAll);
    return flat_;
  }
  const Tensor& flat() const {
    wait(kAll);
    return flat_;
  }
  int64_t numel() const { return flat_.defined() ? flat_.numel() : 0; }
  // Parameters first .. first + count - 1 as one tensor of `shape` (their elements, which
  // lie next to each other in the flat buffer): a fused projection's weight or gradient,
  // e.g. gate_proj and up_proj as one [2F, C] matrix. Waits for each of them.
  Tensor span(size_t first, size_t count, const Shape& shape) const;
  void zero() {
    wait(kAll);
    if (flat_.defined()) flat_.zero_();
  }

  // Values still arriving (ZeRO-1's weight all-gather, overlapped with the next forward):
  // every accessor above first calls `wait` with the parameter's index (kAll for the flat
  // buffer), so nothing reads a tensor before its values are in, and the forward, which
  // takes the parameters in order, overlaps the rest. `wait` returns true once everything
  // has arrived, which removes the fence. Copies of the set share it.
  static constexpr size_t kAll = size_t(-1);
  void set_fence(std::function<bool(size_t)> wait);
  // The tensors without waiting: for the fence's owner, which writes them.
  Tensor& unfenced_flat() { return flat_; }

 private:
  struct Fence {
    std::mutex mu;
    std::function<bool(size_t)> wait;
    std::atomic<bool> active{false};
  };
  void wait(size_t i) const {
    if (fence_ && fence_->active.load(std::memory_order_acquire)) wait_slow(i);
  }
  void wait_slow(size_t i) const;

  std::vector<ParamSpec> specs_;
  std::vector<Tensor> views_;
  std::vector<int64_t> offsets_;  // of each parameter in flat_
  std::unordered_map<std::string, size_t> index_;
  Tensor flat_;
  std::shared_ptr<Fence> fence_ = std::make_shared<Fence>();
};

}  // namespace lethe
