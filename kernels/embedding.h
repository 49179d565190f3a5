// Token embedding lookup.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// ids[N] i32, table[V, C] -> out[N, C]. An id outside [0, V) is an error naming it.
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);

// dtable[V, C] += scatter of dout[N, C] by ids (rows for repeated ids add up).
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

}  // namespace lethe::ops
