// RMSNorm as transformers' LlamaRMSNorm: y = w * x / sqrt(mean(x^2) + eps).
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// x[N, C], w[C] -> y[N, C]; rstd[N] = 1/sqrt(mean(x^2)+eps) is saved for the backward.
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);

// dx[N, C] = d/dx (overwritten, or added when accumulate_dx: the residual stream);
// dw[C] += sum over rows.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                      bool accumulate_dx, Tensor& dw);

}  // namespace lethe::ops
