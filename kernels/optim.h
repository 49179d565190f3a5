// Element-wise optimizer updates and the reductions gradient clipping needs.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"

namespace lethe::ops {

struct AdamWArgs {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based, for bias correction
};

// torch.optim.AdamW semantics: p *= 1 - lr*wd (decoupled), then the bias-corrected Adam
// step p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). m, v are updated in place.
void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const AdamWArgs& a);

struct SGDArgs {
  double lr, momentum, weight_decay;
  bool first_step;  // torch initialises the momentum buffer with the first gradient
};

// torch.optim.SGD semantics: g' = g + wd*p; buf = mu*buf + g' (buf = g' on the first step);
// p -= lr * buf. buf may be undefined when momentum == 0.
void sgd_update(Tensor& p, const Tensor& g, Tensor& buf, const SGDArgs& a);

// sum of squares, accumulated in double in a fixed order.
double sum_squares(const Tensor& x);

// sum_squares of each tensor, bit for bit, all on one device: a device returns the numbers
// with one wait of the host, where a call per tensor waits once per tensor (a 7B model's
// gradient norm would wait 291 times).
std::vector<double> sum_squares_each(const std::vector<Tensor>& xs);

// x *= s
void scale_(Tensor& x, double s);

}  // namespace lethe::ops
