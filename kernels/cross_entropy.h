// Cross-entropy over the vocabulary with per-token log-probabilities and signed
// per-token weights. loss = -sum_i w_i * log p(target_i). Weights are the whole policy:
// 1/n_valid gives transformers' mean loss; a negative weight is gradient ascent, which
// is what the unlearning terms are built from.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

constexpr int32_t kIgnoreIndex = -100;  // transformers' ignore_index: no loss, no gradient

// logits[N, V], targets[N] i32, weights[N] (f32 or f64) -> logprobs[N] (0 where ignored),
// lse[N] (saved for the backward). Returns the weighted loss, accumulated in double.
double cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                             Tensor& lse);

// dlogits[N, V] = dloss * w_i * (softmax_i - onehot(target_i)) (overwritten; 0 on ignored rows).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                            double dloss, Tensor& dlogits);

}  // namespace lethe::ops
