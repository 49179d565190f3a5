// SwiGLU gate of the Llama MLP: a = silu(g) * u. The gate and up projections run as one
// GEMM against [W_gate; W_up], so g and u arrive side by side in each row of its output.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// gu [N, 2F] (each row: F gate values, then F up values) -> a [N, F].
void swiglu_forward(const Tensor& gu, Tensor& a);
// da [N, F] -> dgu [N, 2F] (overwritten, laid out as gu), the input of the fused
// projection's one dx and one dW product. dgu may not overlap gu or da.
void swiglu_backward(const Tensor& da, const Tensor& gu, Tensor& dgu);

}  // namespace lethe::ops
