// RMSNorm as transformers' LlamaRMSNorm: y = w * x / sqrt(mean(x^2) + eps).
#pragma once
#include <cstdint>

#include "engine/core/precision.h"
#include "engine/core/tensor.h"

namespace lethe::ops {

// x[N, C], w[C] -> y[N, C]; rstd[N] = 1/sqrt(mean(x^2)+eps) is saved for the backward.
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);

// The residual add fused with the norm that reads it, as the GPU runs it (one pass over the
// residual stream instead of two): sum[N, C] = x + delta (sum may be x itself; written
// where the layer keeps it, so the stream is not copied first), stored (under
// Precision::bf16 on f32 tensors: rounded to bf16, as the GPU's bf16 stream), then y, rstd
// = the norm of the stored sum. Returns how many sum elements the bf16 rounding changed on
// the CPU (0 otherwise; on a device the bf16 storage rounds). The CPU twin is add,
// rounding and rmsnorm_forward in that order, so the fused and unfused sequences agree
// exactly.
int64_t residual_rmsnorm_forward(const Tensor& x, const Tensor& delta, Tensor& sum, const Tensor& w, double eps,
                                 Tensor& y, Tensor& rstd, Precision precision = Precision::f32);

// dx[N, C] = d/dx (overwritten, or added when accumulate_dx: the residual stream);
// dw[C] += sum over rows.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                      bool accumulate_dx, Tensor& dw);

}  // namespace lethe::ops
