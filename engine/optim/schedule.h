// Learning-rate schedules: linear warmup, then constant, cosine or linear decay to min_lr.
#pragma once
#include <cstdint>
#include <string>

namespace lethe {

struct LRSchedule {
  std::string type = "constant";  // "constant", "cosine" or "linear"
  double lr = 1e-3;               // peak learning rate
  double min_lr = 0.0;            // floor reached at total_steps (cosine, linear)
  int64_t warmup_steps = 0;       // linear ramp from lr/warmup to lr
  int64_t total_steps = 1;        // length of the decay
  void validate() const;
  // Learning rate for 0-based step s.
  double at(int64_t s) const;
};

}  // namespace lethe
