// Internal to kernels/cuda: the FlashAttention-2-structured attention kernels
// (attention_fwd_mma.cu, attention_bwd_mma.cu) behind attention.h's `mma` variants, and the
// head-dimension dispatch every attention kernel shares. Arguments as in attention.h, after
// its checks.
#pragma once
#include <cstdint>
#include <type_traits>

#include "engine/core/error.h"
#include "kernels/cuda/runtime.h"

namespace lethe::cuda::detail {

template <typename F>
void with_head_dim(int64_t D, F&& f) {
  switch (D) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    default: LETHE_FAIL("attention: head_dim ", D, " has no CUDA kernel");
  }
}

void attention_forward_mma(const bf16* q, const bf16* k, const bf16* v, float scale, bf16* o, float* lse, int64_t B,
                           int64_t T, int64_t H, int64_t KV, int64_t D, Stream s);

// dk and dv always; dq either accumulated with atomics into dq_acc (fp32, zeroed by the
// caller) or, when `deterministic`, written to dq by a second kernel in a fixed order
// (dq_acc unused). delta: rowsum(dO * O), [B, H, T] like lse.
void attention_backward_mma(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                            const float* delta, float scale, float* dq_acc, bf16* dq, bf16* dk, bf16* dv,
                            bool deterministic, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, Stream s);

}  // namespace lethe::cuda::detail
