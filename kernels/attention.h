// Causal self-attention with grouped-query heads: query head h reads kv head
// h / (H / KV). Flash-style bookkeeping: the forward saves only the row log-sum-exp,
// and the backward recomputes probabilities from it, so no [T, T] matrix is kept.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// q[B, T, H, D], k, v [B, T, KV, D] -> o[B, T, H, D], lse[B, H, T]. scale is usually 1/sqrt(D).
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o, Tensor& lse);

// dq (overwritten), dk, dv (overwritten) from do.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                        const Tensor& lse, double scale, Tensor& dq, Tensor& dk, Tensor& dv);

}  // namespace lethe::ops
