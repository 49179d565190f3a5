// Causal self-attention with grouped-query heads: query head h reads kv head
// h / (H / KV). Flash-style bookkeeping: the forward saves only the row log-sum-exp,
// and the backward recomputes probabilities from it, so no [T, T] matrix is kept.
//
// Precision::bf16 (f32 tensors only) is the CPU twin of the CUDA kernels
// (kernels/cuda/attention.cu): the probabilities are rounded to bf16 before they multiply
// V, and in the backward P and dS are rounded to bf16 before their products, exactly where
// the kernels round them. The forward walks the keys in the kernels' tiles of 64 with a
// running maximum in base 2, so each probability is rounded relative to the same maximum
// the GPU uses; the row sum is taken before rounding, as there. Inputs are expected to be
// bf16 values already; outputs are not rounded (the caller stores them, as the kernels do).
#pragma once
#include "engine/core/precision.h"
#include "engine/core/tensor.h"

namespace lethe::ops {

// Keys per tile of the CUDA forward kernel; the bf16 forward rounds relative to the
// running maximum over these tiles.
constexpr int64_t kAttentionKeyTile = 64;

// q[B, T, H, D], k, v [B, T, KV, D] -> o[B, T, H, D], lse[B, H, T]. scale is usually 1/sqrt(D).
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& o, Tensor& lse,
                       Precision precision = Precision::f32);

// dq (overwritten), dk, dv (overwritten) from do.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                        const Tensor& lse, double scale, Tensor& dq, Tensor& dk, Tensor& dv,
                        Precision precision = Precision::f32);

// One new query per sequence against a key/value cache (greedy decoding): q[B, 1, H, D],
// the query at position n - 1, attends to keys 0..n-1 of k_cache, v_cache [B, S, KV, D]
// (S >= n) -> o[B, 1, H, D]. The same products and softmax as attention_forward's row
// n - 1 (bf16 included), so cached decoding follows the full forward.
void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n, double scale,
                      Tensor& o, Precision precision = Precision::f32);

// attention_decode's shapes, checked (errors name `op` and the tensor), for every device.
struct DecodeDims {
  int64_t B, H, D, S, KV;
};
DecodeDims check_decode_shapes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t n,
                               const Tensor& o, const char* op);

}  // namespace lethe::ops
