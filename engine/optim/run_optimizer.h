// The optimizer of a run, whatever its layout: Optimizer in one process, ShardedOptimizer
// (dp all-reduce or ZeRO-1, tp slices) on a grid. `lethe train` and `lethe unlearn` both
// hold one, so the precision policy, trainable masks and checkpointed state
// (engine/io/optimizer_checkpoint.h) are written once.
#pragma once
#include <memory>
#include <vector>

#include "engine/core/precision.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/sharded_optimizer.h"
#include "engine/parallel/grid.h"

namespace lethe {

struct RunOptimizer {
  std::unique_ptr<Optimizer> one;
  std::unique_ptr<ShardedOptimizer> par;

  RunOptimizer() = default;
  // A one-process grid gets Optimizer (the same arithmetic as ShardedOptimizer, without
  // its flat-buffer copies).
  RunOptimizer(ParamSet& params, ParamSet& grads, const OptimConfig& cfg, ProcessGrid& grid, Precision precision)
      : grads_(&grads) {
    if (grid.parallel())
      par = std::make_unique<ShardedOptimizer>(params, grads, cfg, grid, grid.bucket_elements(), precision);
    else one = std::make_unique<Optimizer>(params, cfg, precision);
  }

  // Clips and updates with learning rate lr; returns the pre-clip global gradient norm.
  double step(double lr) { return one ? one->step(*grads_, lr) : par->step(lr); }
  int64_t steps_taken() const { return one ? one->steps_taken() : par ? par->steps_taken() : released_steps_; }
  // Frees the optimizer's state (fp32 master weights, moments, ZeRO buffers; waits for the
  // last weight all-gathers) once training is over: `lethe unlearn`'s final evaluation
  // needs the room for the original's and the oracle's weights. Only steps_taken() and
  // held() may be called after it.
  void release() {
    if (!held()) return;
    released_steps_ = steps_taken();
    one.reset();
    par.reset();
  }
  bool held() const { return one || par; }
  void set_steps_taken(int64_t s) { one ? one->set_steps_taken(s) : par->set_steps_taken(s); }
  Precision precision() const { return one ? one->precision() : par->precision(); }
  void set_trainable(std::vector<bool> mask) {
    if (one) one->set_trainable(std::move(mask));
    else par->set_trainable(std::move(mask));
  }
  // After the model's weights were overwritten (a loaded model or checkpoint).
  void params_changed() {
    if (one) one->params_changed();
    else par->params_changed();
  }
  // Under bf16: parameter i's fp32 master from its local tp block at full precision.
  void set_master(size_t i, const Tensor& block) {
    if (one) one->set_master(i, block);
    else par->set_master(i, block);
  }

 private:
  ParamSet* grads_ = nullptr;
  int64_t released_steps_ = 0;
};

}  // namespace lethe
