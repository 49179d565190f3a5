// Losses on a layer's hidden states (RMU, Li et al. 2024): the mean squared error of the
// residual stream at a layer against a target, the frozen original's hidden state
// (retain) or a fixed steering vector (forget), with its gradient. A device computes it
// where the hidden states are: they never cross to the host.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// h [N, C] (the trained model's hidden state), and either target [N, C] (h's dtype) or,
// when target is undefined, steer [C] (f64: the same vector for every row). Rows whose
// targets [N] (i32) entry is kIgnoreIndex are skipped. With d = h - target (in double):
// loss[0] (f64 [1]) += sum of d^2 over the rows kept and every channel, and dh [N, C]
// = grad_scale * 2 * d / denom, 0 on skipped rows, stored in dh's dtype (h's on the CPU,
// f32 on a device). The sum runs in row-major order on the CPU.
void hidden_mse(const Tensor& h, const Tensor& target, const Tensor& steer, const Tensor& targets, double grad_scale,
                double denom, Tensor& dh, Tensor& loss);

}  // namespace lethe::ops
