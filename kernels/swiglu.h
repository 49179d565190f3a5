// SwiGLU gate of the Llama MLP: a = silu(g) * u. The three projections are linear ops.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// g, u [N, F] -> a [N, F].
void swiglu_forward(const Tensor& g, const Tensor& u, Tensor& a);
// da -> dg, du (overwritten).
void swiglu_backward(const Tensor& da, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);

}  // namespace lethe::ops
