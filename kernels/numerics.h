// NaN / Inf scan of a tensor on any device: the debug-mode numerics guard's op
// (engine/model/numerics_guard.h names what it finds). A device scans in place and returns
// two numbers, not the tensor.
#pragma once
#include <cstdint>

#include "engine/core/tensor.h"

namespace lethe::ops {

struct NonFiniteScan {
  int64_t count = 0;   // non-finite entries
  int64_t first = -1;  // the lowest flat index among them; -1 when every entry is finite
};

// Floating tensors (f32, f64, bf16, f16); integer tensors hold no NaN: {0, -1}.
NonFiniteScan find_nonfinite(const Tensor& x);

}  // namespace lethe::ops
