// Causal grouped-query attention on the GPU in the flash manner: tiles of queries and keys
// in shared memory, an online softmax, tensor-core products (WMMA, bf16 in, fp32
// accumulate), no [T, T] matrix in device memory. The forward saves the row log-sum-exp;
// the backward recomputes probabilities from it. Same math as ops::attention_*.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// Kernel variants. `wmma` (the default of each pass) round-trips scores through shared
// memory. `mma` is FlashAttention-2's structure: mma.sync m16n8k16 with ldmatrix, K/V (or
// Q/dO) tiles double-buffered with cp.async, the softmax and the accumulators in
// registers; faster, and opt-in until it has passed the GPU tests on hardware.
// `mma_deterministic` (backward) computes dq in a second kernel that walks the keys in a
// fixed order instead of accumulating with atomics, so the result is bitwise repeatable.
// Every variant computes the same math up to rounding.
enum class AttentionForwardKernel { wmma, mma };
enum class AttentionBackwardKernel { wmma, mma, mma_deterministic };
void set_attention_forward_kernel(AttentionForwardKernel k);
AttentionForwardKernel attention_forward_kernel();
void set_attention_backward_kernel(AttentionBackwardKernel k);
AttentionBackwardKernel attention_backward_kernel();
const char* attention_kernel_name(AttentionForwardKernel k);
const char* attention_kernel_name(AttentionBackwardKernel k);

// Head dimensions with a compiled kernel (16, 32, 64, 128).
bool attention_supports_head_dim(int64_t D);

// q[B, T, H, D], k, v [B, T, KV, D] bf16 -> o[B, T, H, D] bf16, lse[B, H, T] fp32
// (natural log, of the scaled scores). Query head h reads kv head h / (H / KV).
void attention_forward(const bf16* q, const bf16* k, const bf16* v, float scale, bf16* o, float* lse, int64_t B,
                       int64_t T, int64_t H, int64_t KV, int64_t D, Stream s = nullptr);

// Device scratch attention_backward needs: an fp32 dq accumulator and rowsum(dO * O).
size_t attention_backward_workspace_bytes(int64_t B, int64_t T, int64_t H, int64_t D);

// dq, dk, dv (all overwritten, bf16) from dout. Each block owns one tile of keys of one kv
// head and loops over every query head of its group, so dk and dv need no atomics; dq
// is accumulated in fp32 with atomics (its last bits may vary run to run), except with
// AttentionBackwardKernel::mma_deterministic.
void attention_backward(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                        const float* lse, float scale, bf16* dq, bf16* dk, bf16* dv, void* workspace, int64_t B,
                        int64_t T, int64_t H, int64_t KV, int64_t D, Stream s = nullptr);

}  // namespace lethe::cuda
