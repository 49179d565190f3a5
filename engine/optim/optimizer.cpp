#include "engine/optim/optimizer.h"

#include <cmath>

#include "kernels/optim.h"

namespace lethe {

void OptimConfig::validate() const {
  LETHE_CHECK(type == "adamw" || type == "sgd", "optimizer '", type, "' is not supported (adamw, sgd)");
  LETHE_CHECK(beta1 >= 0 && beta1 < 1, "beta1 must be in [0, 1), got ", beta1);
  LETHE_CHECK(beta2 >= 0 && beta2 < 1, "beta2 must be in [0, 1), got ", beta2);
  LETHE_CHECK(eps > 0, "eps must be positive, got ", eps);
  LETHE_CHECK(weight_decay >= 0, "weight_decay must be >= 0, got ", weight_decay);
  LETHE_CHECK(momentum >= 0 && momentum < 1, "momentum must be in [0, 1), got ", momentum);
  LETHE_CHECK(grad_clip >= 0, "grad_clip must be >= 0 (0 disables), got ", grad_clip);
}

double clip_grad_norm(ParamSet& grads, double max_norm) {
  // Sum per tensor, then over tensors in order, as torch does; deterministic. On a device
  // the host waits once for all of them.
  std::vector<Tensor> each;
  each.reserve(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) each.push_back(grads[i]);
  double ss = 0;
  for (double s : ops::sum_squares_each(each)) ss += s;
  const double norm = std::sqrt(ss);
  LETHE_CHECK(std::isfinite(norm), "gradient norm is ", norm, "; refusing to update the weights");
  if (max_norm > 0) {
    const double f = max_norm / (norm + 1e-6);
    if (f < 1) ops::scale_(grads.flat(), f);
  }
  return norm;
}

Optimizer::Optimizer(ParamSet& params, const OptimConfig& cfg, Precision precision)
    : params_(params), cfg_(cfg), precision_(precision) {
  cfg_.validate();
  const DType dt = params.flat().dtype();
  const Device dev = params.flat().device();
  // Master weights and moments live beside the parameters, on their device.
  if (precision_ == Precision::bf16) {
    LETHE_CHECK(dt == (dev == Device::cpu ? DType::f32 : DType::bf16), "the bf16 policy keeps ",
                dev == Device::cpu ? "f32 parameters holding bf16 values on the CPU" : "bf16 parameters on a device",
                ", got ", params.flat().describe());
    master_ = ParamSet(params.specs(), DType::f32, dev);
    params_changed();
  } else {
    LETHE_CHECK(dev == Device::cpu, "the optimizer runs f32/f64 parameters on the CPU only, got ",
                params.flat().describe());
  }
  const DType state = precision_ == Precision::bf16 ? DType::f32 : dt;
  if (cfg_.type == "adamw") {
    m_ = ParamSet(params.specs(), state, dev);
    v_ = ParamSet(params.specs(), state, dev);
  } else if (cfg_.momentum != 0) {
    m_ = ParamSet(params.specs(), state, dev);
  }
}

void Optimizer::params_changed() {
  if (precision_ == Precision::bf16) master_.flat().copy_from(params_.flat());
}

void Optimizer::set_master(size_t i, const Tensor& block) {
  LETHE_CHECK(precision_ == Precision::bf16, "set_master: only the bf16 policy keeps a master copy");
  master_[i].copy_from(block);
}

void Optimizer::master_changed() {
  if (precision_ != Precision::bf16) return;
  params_.flat().copy_from(master_.flat());  // on a device, the copy into bf16 rounds
  if (params_.flat().device() == Device::cpu) round_to_bf16_(params_.flat());
}

void Optimizer::set_trainable(std::vector<bool> trainable) {
  LETHE_CHECK(trainable.size() == params_.size(), "set_trainable: ", trainable.size(), " flags for ", params_.size(),
              " parameters");
  trainable_ = std::move(trainable);
}

double Optimizer::step(ParamSet& grads, double lr) {
  LETHE_CHECK(std::isfinite(lr) && lr >= 0, "learning rate must be finite and >= 0, got ", lr);
  // Frozen parameters contribute nothing to the clipped norm either.
  if (!trainable_.empty())
    for (size_t i = 0; i < params_.size(); ++i)
      if (!trainable_[i]) grads[i].zero_();
  const double norm = clip_grad_norm(grads, cfg_.grad_clip);
  ++step_;
  ParamSet& w = master();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!trainable_.empty() && !trainable_[i]) continue;
    const double wd = params_[i].ndim() >= 2 ? cfg_.weight_decay : 0.0;
    if (cfg_.type == "adamw") {
      ops::adamw_update(w[i], grads[i], m_[i], v_[i], {lr, cfg_.beta1, cfg_.beta2, cfg_.eps, wd, step_});
    } else {
      Tensor none;
      ops::sgd_update(w[i], grads[i], cfg_.momentum != 0 ? m_[i] : none, {lr, cfg_.momentum, wd, step_ == 1});
    }
    if (precision_ == Precision::bf16) {  // on a device, a cast kernel writes the bf16 copy
      params_[i].copy_from(w[i]);
      if (params_[i].device() == Device::cpu) round_to_bf16_(params_[i]);
    }
  }
  return norm;
}

}  // namespace lethe
