// bf16 <-> fp32 conversions (round to nearest even, as torch and the CPU bf16 type do).
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

void cast_f32_to_bf16(const float* x, bf16* y, int64_t n, Stream s = nullptr);
void cast_bf16_to_f32(const bf16* x, float* y, int64_t n, Stream s = nullptr);

}  // namespace lethe::cuda
