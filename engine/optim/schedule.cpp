#include "engine/optim/schedule.h"

#include <cmath>

#include "engine/core/error.h"

namespace lethe {

void LRSchedule::validate() const {
  LETHE_CHECK(type == "constant" || type == "cosine" || type == "linear", "lr schedule '", type,
              "' is not supported (constant, cosine, linear)");
  LETHE_CHECK(lr >= 0 && std::isfinite(lr), "lr must be finite and >= 0, got ", lr);
  LETHE_CHECK(min_lr >= 0 && min_lr <= lr, "min_lr must be in [0, lr], got ", min_lr);
  LETHE_CHECK(warmup_steps >= 0, "warmup_steps must be >= 0, got ", warmup_steps);
  LETHE_CHECK(total_steps >= 1, "steps must be >= 1, got ", total_steps);
}

double LRSchedule::at(int64_t s) const {
  if (s < warmup_steps) return lr * double(s + 1) / double(warmup_steps);
  if (type == "constant") return lr;
  const int64_t span = std::max<int64_t>(1, total_steps - warmup_steps);
  const double p = std::min(1.0, double(s - warmup_steps) / double(span));
  const double frac = type == "cosine" ? 0.5 * (1 + std::cos(3.141592653589793 * p)) : 1 - p;
  return min_lr + (lr - min_lr) * frac;
}

}  // namespace lethe
