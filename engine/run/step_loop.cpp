#include "engine/run/step_loop.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>

#include "engine/core/error.h"
#include "engine/parallel/grid.h"
#include "engine/parallel/stop_request.h"

namespace lethe {

StepLoopResult run_step_loop(LlamaModel& model, RunOptimizer& opt, const LRSchedule& schedule,
                             const StepLoopConfig& cfg, const StepHooks& hooks) {
  LETHE_CHECK(cfg.first >= 0 && cfg.first <= cfg.stop_at && cfg.stop_at <= cfg.total, "step loop: steps [",
              cfg.first, ", ", cfg.stop_at, ") of ", cfg.total);
  LETHE_CHECK(bool(hooks.accumulate) && bool(hooks.after_update), "step loop: no accumulate or after_update");
  ProcessGrid& grid = model.grid();
  // Testing hook for tests/test_metrics_durable.cpp: LETHE_TEST_KILL_AFTER_STEP=k sends
  // SIGKILL to this process once step k is done (its log written, its checkpoint, if any,
  // committed), a kill -9 at a known point of the run.
  const char* kill_env = std::getenv("LETHE_TEST_KILL_AFTER_STEP");
  const int64_t kill_after = kill_env ? std::atoll(kill_env) : 0;
  StepLoopResult res;
  res.steps_run = cfg.first;
  for (int64_t step = cfg.first; step < cfg.stop_at; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    maybe_raise_test_signal(long(step + 1), grid.rank());
    model.grads().zero();
    if (model.numerics().enabled()) model.numerics().set_context("step " + std::to_string(step + 1));
    StepInfo s;
    s.step = step + 1;
    s.loss = hooks.accumulate(step);
    s.lr = schedule.at(step);
    s.grad_norm = opt.step(s.lr);
    if (model.numerics().enabled()) model.numerics().set_context("step " + std::to_string(step + 1));
    // Debug mode: a bad update is named before a checkpoint or an export could record it.
    model.numerics().check_params(model.params(), "parameter", "after the update");
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    res.steps_run = step + 1;
    if (hooks.after_update(s)) {
      res.ended_by_hook = true;
      break;
    }
    const bool run_end = step + 1 == cfg.total;
    const bool saved = hooks.checkpoint && (run_end ? cfg.checkpoint_at_end
                                                    : (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) ||
                                                          step + 1 == cfg.stop_at);
    if (saved) hooks.checkpoint(step + 1);
    if (step + 1 == kill_after) ::raise(SIGKILL);
    // A stop signal (a time limit, a preemption, Ctrl-C): a checkpoint after this step and
    // the end of the run, every rank after the same step.
    if (!run_end && hooks.checkpoint && stop_handlers_installed())
      if (const int sig = agreed_stop_signal(grid)) {
        if (!saved) hooks.checkpoint(step + 1);
        res.stopped_by = sig;
        break;
      }
  }
  return res;
}

}  // namespace lethe
