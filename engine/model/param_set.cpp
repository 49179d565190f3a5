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
    off += shape_numel(specs_[i].shape);
  }
}

Tensor& ParamSet::get(const std::string& name) {
  auto it = index_.find(name);
  LETHE_CHECK(it != index_.end(), "no parameter named '", name, "'");
  return views_[it->second];
}

const Tensor& ParamSet::get(const std::string& name) const {
  auto it = index_.find(name);
  LETHE_CHECK(it != index_.end(), "no parameter named '", name, "'");
  return views_[it->second];
}

}  // namespace lethe
