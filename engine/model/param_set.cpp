#include "engine/model/param_set.h"

namespace lethe {

ParamSet::ParamSet(const std::vector<ParamSpec>& specs, DType dtype, Device device) : specs_(specs) {
  int64_t total = 0;
  for (const auto& s : specs_) total += shape_numel(s.shape);
  flat_ = Tensor::zeros({total}, dtype, device);
  int64_t off = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    LETHE_CHECK(index_.emplace(specs_[i].name, i).second, "duplicate parameter name ", specs_[i].name);
    views_.push_back(flat_.view(off, specs_[i].shape));
    offsets_.push_back(off);
    off += shape_numel(specs_[i].shape);
  }
}

Tensor& ParamSet::get(const std::string& name) {
  auto it = index_.find(name);
  LETHE_CHECK(it != index_.end(), "no parameter named '", name, "'");
  wait(it->second);
  return views_[it->second];
}

const Tensor& ParamSet::get(const std::string& name) const {
  auto it = index_.find(name);
  LETHE_CHECK(it != index_.end(), "no parameter named '", name, "'");
  wait(it->second);
  return views_[it->second];
}

Tensor ParamSet::span(size_t first, size_t count, const Shape& shape) const {
  LETHE_CHECK(count > 0 && first + count <= specs_.size(), "ParamSet::span: parameters [", first, ", ",
              first + count, ") of ", specs_.size());
  int64_t n = 0;
  for (size_t i = first; i < first + count; ++i) {
    wait(i);
    n += shape_numel(specs_[i].shape);
  }
  LETHE_CHECK(n == shape_numel(shape), "ParamSet::span: ", specs_[first].name, " and the ", count - 1,
              " after it hold ", n, " elements, not ", shape_numel(shape));
  return flat_.view(offsets_[first], shape);
}

void ParamSet::set_fence(std::function<bool(size_t)> wait) {
  std::lock_guard<std::mutex> lock(fence_->mu);
  fence_->wait = std::move(wait);
  fence_->active.store(bool(fence_->wait), std::memory_order_release);
}

// One thread at a time runs the owner's wait (an OpenMP region may touch parameters from
// several); the fence is dropped once it reports everything in.
void ParamSet::wait_slow(size_t i) const {
  std::lock_guard<std::mutex> lock(fence_->mu);
  if (!fence_->active.load(std::memory_order_relaxed)) return;
  if (fence_->wait(i)) {
    fence_->active.store(false, std::memory_order_release);
    fence_->wait = nullptr;
  }
}

}  // namespace lethe
