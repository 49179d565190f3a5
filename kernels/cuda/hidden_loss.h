// kernels/hidden_loss.h's hidden_mse on the GPU: h and target bf16, dh f32.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// target null: steer [C] (double) for every row. row_sq [N] (double) is the caller's
// workspace for the rows' sums of squares, added into *loss afterwards by one block in a
// fixed order (strided per thread, then a tree): the same value every run, though not the
// CPU twin's row order.
void hidden_mse(const bf16* h, const bf16* target, const double* steer, const int32_t* targets, double grad_scale,
                double denom, float* dh, double* row_sq, double* loss, int64_t N, int64_t C, Stream s = nullptr);

}  // namespace lethe::cuda
