// Element-wise ops the model runs between the others: the residual add.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// out = a + b (same shape and dtype; out may be a or b itself): the residual stream's add,
// written where the next op reads it, so the stream is never copied first.
void add(const Tensor& a, const Tensor& b, Tensor& out);
// y += x.
inline void add_(Tensor& y, const Tensor& x) { add(y, x, y); }

}  // namespace lethe::ops
