// bf16 <-> fp32 conversions (round to nearest even, as torch and the CPU bf16 type do),
// and device-side fills for initialising weights without a host round trip.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

void cast_f32_to_bf16(const float* x, bf16* y, int64_t n, Stream s = nullptr);
void cast_bf16_to_f32(const bf16* x, float* y, int64_t n, Stream s = nullptr);

// x[i] = value.
void fill(float* x, int64_t n, float value, Stream s = nullptr);
// x[i] uniform with mean 0 and the given standard deviation, a pure function of (seed, i):
// the same values on any GPU and launch shape.
void fill_uniform(float* x, int64_t n, float stddev, uint64_t seed, Stream s = nullptr);

}  // namespace lethe::cuda
