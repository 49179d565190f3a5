// Linear layer without bias, in transformers' weight layout W[out, in]: y = x W^T.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// x[N, in], w[out, in] -> y[N, out] (overwritten).
void linear_forward(const Tensor& x, const Tensor& w, Tensor& y);

// dx[N, in] = dy W (added to dx when accumulate_dx, so q/k/v can share one dx);
// dw[out, in] += dy^T x. Either output may be null to skip it.
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, bool accumulate_dx,
                     Tensor* dw);

}  // namespace lethe::ops
