// RMSNorm (LlamaRMSNorm) on bf16 rows with fp32 statistics, and the residual add fused in
// front of it: each block reads the residual stream once instead of twice.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// x[N, C], w[C] -> y[N, C]; rstd[N] fp32 saved for the backward.
void rmsnorm_forward(const bf16* x, const bf16* w, float eps, bf16* y, float* rstd, int64_t N, int64_t C,
                     Stream s = nullptr);

// sum = x + delta (rounded to bf16, as the unfused pair would; sum may be x itself), then
// y = rmsnorm(sum).
void residual_rmsnorm_forward(const bf16* x, const bf16* delta, bf16* sum, const bf16* w, float eps, bf16* y,
                              float* rstd, int64_t N, int64_t C, Stream s = nullptr);

// dx (overwritten, or added to when accumulate_dx: the residual stream's gradient);
// dw[C] fp32 += sum over rows (atomics across blocks: last bits may vary run to run).
void rmsnorm_backward(const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx, bool accumulate_dx,
                      float* dw, int64_t N, int64_t C, Stream s = nullptr);

}  // namespace lethe::cuda
