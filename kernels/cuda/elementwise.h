// Element-wise ops the model runs between the others: the residual add (the CUDA side of
// ops::add_, kernels/elementwise.h).
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// out = a + b over n elements; out may alias a or b. The bf16 sum is taken in fp32 and rounded once
// to nearest even, bit for bit as engine/core/bf16.h's float_to_bf16 (NaN included), so
// the GPU and the CPU twin of a bf16 model store the same residual stream.
void add(const bf16* a, const bf16* b, bf16* out, int64_t n, Stream s = nullptr);
void add(const float* a, const float* b, float* out, int64_t n, Stream s = nullptr);

}  // namespace lethe::cuda
