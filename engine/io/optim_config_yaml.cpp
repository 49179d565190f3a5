#include "engine/io/optim_config_yaml.h"

#include <algorithm>

namespace lethe {

void read_optimizer_section(const ConfigNode& o, int64_t total_steps, OptimConfig& optim, LRSchedule& schedule) {
  optim.type = o.get<std::string>("type", optim.type);
  optim.beta1 = o.get<double>("beta1", optim.beta1);
  optim.beta2 = o.get<double>("beta2", optim.beta2);
  optim.eps = o.get<double>("eps", optim.eps);
  optim.weight_decay = o.get<double>("weight_decay", optim.weight_decay);
  optim.momentum = o.get<double>("momentum", optim.momentum);
  optim.grad_clip = o.get<double>("grad_clip", optim.grad_clip);
  schedule.type = o.get<std::string>("schedule", schedule.type);
  schedule.lr = o.get<double>("lr", schedule.lr);
  schedule.min_lr = o.get<double>("min_lr", schedule.min_lr);
  schedule.warmup_steps = o.get<int64_t>("warmup_steps", schedule.warmup_steps);
  schedule.total_steps = std::max<int64_t>(1, total_steps);
  o.finish();
  try {
    optim.validate();
    schedule.validate();
  } catch (const Error& e) {
    LETHE_FAIL(o.file(), ": section 'optimizer': ", e.what());
  }
}

}  // namespace lethe
