// Element-wise ops the model runs between the others: the residual add.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// y += x (same shape and dtype): the residual stream's add.
void add_(Tensor& y, const Tensor& x);

}  // namespace lethe::ops
