#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <optional>

#include "engine/cli/commands.h"
#include "engine/io/model_loader.h"
#include "engine/plan/device_fit.h"
#include "engine/plan/host_fit.h"
#include "engine/plan/plan_inputs.h"
#include "engine/parallel/failure.h"
#include "engine/parallel/stop_request.h"
#include "kernels/device.h"
#include "engine/unlearn/progress.h"
#include "engine/unlearn/terms.h"
#include "engine/unlearn/unlearner.h"

namespace lethe::cli {
namespace {

// What `lethe plan` is told about this run; nullopt when the plan cannot read the model or
// the recipe (the run's own errors then speak).
std::optional<plan::PlanInput> plan_input(const Recipe& r) {
  plan::PlanInput in;
  try {
    in.model = ModelSource::peek_config(r.model);
  } catch (const Error&) {
    return std::nullopt;
  }
  in.tp = r.parallel.tp;
  in.dp = r.parallel.dp;
  in.zero1 = r.parallel.zero1;
  in.micro_batch = std::max<int64_t>(1, r.batch_size / std::max(1, r.parallel.dp));
  in.seq_len = r.seq_len;
  in.precision = r.precision.value_or(Precision::f32);
  try {
    in.recipe = plan::recipe_needs(r, in.model);
    in.recompute = r.recompute_for(in.model.n_layers);
  } catch (const Error&) {
    return std::nullopt;
  }
  return in;
}

// A run that cannot fit this node's memory is refused before anything is allocated, with
// the plan's numbers.
void check_fits(const Recipe& r) {
  std::optional<plan::PlanInput> in = plan_input(r);
  if (!in) return;
  // On a GPU the device holds the run (the host only stages one tensor at a time), in bf16.
  if (r.device == DeviceChoice::cuda) {
    const std::vector<DeviceInfo> gpus = cuda_devices();
    if (gpus.empty()) return;  // the run names what is missing
    in->precision = Precision::bf16;
    plan::check_device_fit(*in, r.file, gpus[0].name, double(gpus[0].memory_bytes));
    return;
  }
  plan::check_host_fit(*in, r.file);
}

// On a device: the training's peak next to the plan, and the final evaluation's.
void report_device_memory(const Recipe& r, const UnlearnResult& res) {
  if (!res.lead || (res.device_training.peak_reserved == 0 && res.device_final.peak_reserved == 0)) return;
  std::optional<plan::PlanInput> in = plan_input(r);
  if (in) in->precision = Precision::bf16;
  if (res.device_training.peak_reserved > 0)
    std::cout << plan::device_memory_line("training", res.device_training,
                                          in ? plan::memory_plan(*in).total() : 0)
              << std::endl;
  if (res.device_final.peak_reserved > 0)
    std::cout << plan::device_memory_line("final evaluation", res.device_final, 0) << std::endl;
}

}  // namespace


int unlearn_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::string types;
    for (const auto& t : term_types()) types += (types.empty() ? "" : ", ") + t;
    std::cout << "usage: lethe unlearn RECIPE.yaml [key=value ...]\n"
                 "  Runs an unlearning recipe (configs/recipes/*.yaml): a weighted sum of terms over the\n"
                 "  forget / retain / general streams. Writes output.dir/{final,best,metrics.jsonl,\n"
                 "  report.json,report.md,curves.svg}. Overrides: train.steps=20 optimizer.lr=1e-4\n"
                 "  terms.retain.weight=0.5 output.dir=runs/x\n"
                 "  Resumable: output.checkpoint_every=N writes output.dir/checkpoints; after an\n"
                 "  interruption, the same command with train.resume=true continues bit-exactly.\n"
                 "  Parallel (under mpirun / srun): parallel.tp=2 parallel.dp=2 (tp * dp = ranks);\n"
                 "  train.batch_size must be a multiple of parallel.dp.\n"
                 "  term types: "
              << types << "\n";
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> overrides(args.begin() + 1, args.end());
  for (const auto& o : overrides)
    LETHE_CHECK(o.find('=') != std::string::npos, "unexpected argument '", o, "' (overrides are key=value)");
  // Under mpirun an error on one rank must end every rank, not leave them in a collective.
  return run_or_abort_job([&] {
    const bool bar = progress_bar_wanted(isatty(fileno(stdout)) != 0);
    const Recipe r = load_recipe(args[0], overrides);
    check_fits(r);
    const UnlearnResult res = run_unlearn(r, std::cout, bar);
    report_device_memory(r, res);
    return res.stopped_by ? kExitStopped : 0;
  });
}

}  // namespace lethe::cli
