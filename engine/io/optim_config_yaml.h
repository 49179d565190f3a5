// The `optimizer:` section shared by training configs and unlearning recipes.
#pragma once
#include "engine/io/yaml_config.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/schedule.h"

namespace lethe {

// Reads type, beta1, beta2, eps, weight_decay, momentum, grad_clip, schedule, lr, min_lr
// and warmup_steps over the given defaults, validates them for total_steps, and rejects
// unknown keys; errors name the file and the key.
void read_optimizer_section(const ConfigNode& o, int64_t total_steps, OptimConfig& optim, LRSchedule& schedule);

}  // namespace lethe
