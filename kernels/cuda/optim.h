// Optimizer kernels: multi-tensor AdamW and SGD on fp32 master weights with fp32 state, and
// the global gradient norm for clipping. Both keep their scalars on the device, so a step
// (norm -> clip coefficient -> update) never waits for the host.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

struct AdamWTensor {
  float* master;        // fp32 master weights, updated in place
  const float* grad;    // fp32 gradient
  float* m;             // first moment
  float* v;             // second moment
  bf16* param;          // bf16 copy the forward reads; null to skip
  int64_t n;
  double weight_decay;  // per tensor: norms and embeddings often take none
};

struct AdamWHyper {
  double lr, beta1, beta2, eps;
  int64_t step;  // 1-based, for bias correction
};

// torch.optim.AdamW semantics, ops::adamw_update bit for bit: p *= 1 - lr*wd, then
// p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), every f32 operation rounded on its own in the
// CPU twin's order, with its scalars rounded to f32 from the same doubles. grad_scale
// (device, nullable) multiplies every gradient first: the clip coefficient from
// clip_coefficient() (as ops::scale_ would beforehand). `tensors` is a host array;
// launches go in batches.
void adamw_multi(const AdamWTensor* tensors, int count, const AdamWHyper& h, const float* grad_scale,
                 Stream s = nullptr);

constexpr int kNormPartials = 1024;

// *sumsq (device double) = sum of squares over all the tensors, in a fixed order: the
// same value every run. partials: kNormPartials doubles of device scratch.
void sum_squares_multi(const float* const* tensors, const int64_t* sizes, int count, double* partials, double* sumsq,
                       Stream s = nullptr);

// torch.nn.utils.clip_grad_norm_: norm = sqrt(sumsq); coef = min(1, max_norm / (norm + 1e-6)).
// max_norm <= 0 disables clipping (coef = 1); a non-finite norm gives coef = NaN (torch
// keeps it). norm may be null.
void clip_coefficient(const double* sumsq, float max_norm, float* coef, float* norm, Stream s = nullptr);

// torch.optim.SGD on fp32 master weights, ops::sgd_update bit for bit: d = g + wd p;
// with momentum (buf non-null) buf = d on the first step, else mu buf + d, and d = buf;
// p -= lr d.
void sgd_update(float* p, const float* g, float* buf, int64_t n, float lr, float momentum, float weight_decay,
                bool first_step, Stream s = nullptr);

// x *= a (fp32).
void scale(float* x, int64_t n, float a, Stream s = nullptr);

}  // namespace lethe::cuda
