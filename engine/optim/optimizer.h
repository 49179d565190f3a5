// Optimizers over a ParamSet: AdamW (decoupled weight decay) and SGD, with global
// gradient-norm clipping. Weight decay applies to matrices only (ndim >= 2), never to
// norm weights, as in Megatron-LM and llm.c.
//
// Precision::bf16 (a model whose weights are bf16 values, llama.h): the optimizer owns
// fp32 master weights, updates them with the fp32 gradients and moments, and writes the
// model's weights back as the master rounded to bf16, as the GPU's AdamW kernel does.
// An update smaller than half a bf16 step of a weight therefore accumulates in the
// master instead of being lost.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/precision.h"
#include "engine/model/param_set.h"

namespace lethe {

struct OptimConfig {
  std::string type = "adamw";  // "adamw" or "sgd"
  double beta1 = 0.9;          // AdamW first-moment decay
  double beta2 = 0.95;         // AdamW second-moment decay
  double eps = 1e-8;           // AdamW denominator epsilon
  double weight_decay = 0.0;   // decoupled (AdamW) or L2 (SGD), on matrices only
  double momentum = 0.0;       // SGD momentum; 0 disables the buffer
  double grad_clip = 1.0;      // max global L2 norm of the gradient; 0 disables clipping
  void validate() const;       // throws naming the field
};

// Scales grads so their global L2 norm is at most max_norm (torch.nn.utils.clip_grad_norm_:
// factor max_norm / (norm + 1e-6), applied only when < 1). Returns the norm before clipping.
double clip_grad_norm(ParamSet& grads, double max_norm);

class Optimizer {
 public:
  Optimizer(ParamSet& params, const OptimConfig& cfg, Precision precision = Precision::f32);

  // Clips grads, then updates params with learning rate lr. Returns the pre-clip norm.
  double step(ParamSet& grads, double lr);
  int64_t steps_taken() const { return step_; }
  const OptimConfig& config() const { return cfg_; }
  // Moments, in the params' layout: AdamW m and v, or SGD's momentum buffer in m.
  ParamSet& m() { return m_; }
  ParamSet& v() { return v_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  Precision precision() const { return precision_; }
  // The weights the update applies to: the fp32 master under bf16, the params otherwise.
  // A checkpoint of a bf16 run saves these, so that a resume loses no update.
  ParamSet& master() { return precision_ == Precision::bf16 ? master_ : params_; }
  // After params are overwritten (a loaded checkpoint), the master copy restarts from
  // them; a checkpoint that holds the master writes master() and calls master_changed().
  void params_changed();
  // After master() is overwritten: the params become the master rounded to bf16.
  void master_changed();
  // Under bf16: parameter i's fp32 master from `block` in any dtype (a loaded f32 weight,
  // whose bf16 rounding the model holds).
  void set_master(size_t i, const Tensor& block);
  // Parameters with trainable[i] == false are left untouched (no decay, no moments):
  // RMU updates only a few MLP projections.
  void set_trainable(std::vector<bool> trainable);

 private:
  ParamSet& params_;
  OptimConfig cfg_;
  Precision precision_;
  ParamSet master_;  // bf16 only
  ParamSet m_, v_;
  int64_t step_ = 0;
  std::vector<bool> trainable_;
};

}  // namespace lethe
