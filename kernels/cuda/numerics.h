// NaN / Inf scan of a device buffer, for the GPU side of the debug-mode numerics guard
// (engine/model/numerics_guard.h is the CPU side): how many entries are non-finite and
// the lowest index among them, so a finding can name the tensor and the position.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

struct DeviceNonFinite {
  int64_t count = 0;
  int64_t first = -1;  // -1: every entry is finite
};

// Asynchronous: writes {count, first} (first = INT64_MAX when none) into `result`, two
// int64 in device memory, on stream s.
void nonfinite_scan(const bf16* x, int64_t n, int64_t* result, Stream s = nullptr);
void nonfinite_scan(const float* x, int64_t n, int64_t* result, Stream s = nullptr);

// Scans and waits for the answer (debug mode only: it synchronises the stream).
DeviceNonFinite find_nonfinite(const bf16* x, int64_t n, Stream s = nullptr);
DeviceNonFinite find_nonfinite(const float* x, int64_t n, Stream s = nullptr);

}  // namespace lethe::cuda
