// The optimizer-step loop that `lethe train` and `lethe unlearn` share: training is a
// recipe with one descent term, so both run the same steps, and what a step does to the
// model, the optimizer, the numerics guard, checkpoints and stop signals is written once.
// A command supplies what differs: how a step's gradients are made (one loss, or a
// weighted sum of unlearning terms), what is logged and evaluated after the update, and
// what its checkpoint holds.
//
// One step: zero the gradients; accumulate (the command's forward and backward passes,
// which check their losses are finite before anything is updated); the update at the
// schedule's learning rate; the guard's check of the new weights (debug mode);
// after_update (log, evaluate: it may end the run, e.g. a stop rule); a checkpoint every
// `checkpoint_every` steps and when the invocation pauses (train.run_steps); then, under
// installed stop handlers, a signal any rank received ends the run after a checkpoint.
#pragma once
#include <cstdint>
#include <functional>

#include "engine/model/llama.h"
#include "engine/optim/run_optimizer.h"
#include "engine/optim/schedule.h"

namespace lethe {

struct StepLoopConfig {
  int64_t first = 0;             // steps already done (a resumed run's)
  int64_t stop_at = 0;           // this invocation ends after this step
  int64_t total = 0;             // the run's length
  int64_t checkpoint_every = 0;  // 0: only when pausing
  bool checkpoint_at_end = false;  // also after the run's last step (train: its checkpoint is the result)
};

struct StepInfo {
  int64_t step = 0;  // 1-based: steps done after this one
  double loss = 0, lr = 0, grad_norm = 0;
  double seconds = 0;  // this step, from zeroing the gradients to the checked update
};

struct StepHooks {
  // Adds the step's gradients into the model's and returns its loss. `step` is 0-based.
  std::function<double(int64_t step)> accumulate;
  // After the update; returns true to end the run here (no checkpoint follows).
  std::function<bool(const StepInfo&)> after_update;
  // A resumable checkpoint after `steps` steps; null when the run keeps none.
  std::function<void(int64_t steps)> checkpoint;
};

struct StepLoopResult {
  int64_t steps_run = 0;   // the run's steps done (first + this invocation's)
  bool ended_by_hook = false;
  int stopped_by = 0;      // the stop signal that ended the run, 0 if none
};

StepLoopResult run_step_loop(LlamaModel& model, RunOptimizer& opt, const LRSchedule& schedule,
                             const StepLoopConfig& cfg, const StepHooks& hooks);

}  // namespace lethe
