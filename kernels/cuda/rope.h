// Rotary position embedding on the GPU, transformers' rotate_half layout (pair i, i + D/2).
// The tables come from ops::rope_inv_freq / ops::rope_tables (float64 on the host, so
// every scaling option of the CPU version applies), converted to fp32 once per run.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// x[B, T, H, D] bf16 -> y (may alias x); cos, sin [>=T, D/2] fp32, row t for position t.
void rope_forward(const bf16* x, const float* cos, const float* sin, bf16* y, int64_t B, int64_t T, int64_t H,
                  int64_t D, Stream s = nullptr);
// The transpose of the rotation: dx from dy (may alias).
void rope_backward(const bf16* dy, const float* cos, const float* sin, bf16* dx, int64_t B, int64_t T, int64_t H,
                   int64_t D, Stream s = nullptr);

// The fused q/k/v projection's output qkv [B*T, (H + 2 KV) D] split into q [B, T, H, D] and
// k [B, T, KV, D] (rotated) and v [B, T, KV, D] (copied); none may overlap qkv.
void qkv_split_rope(const bf16* qkv, const float* cos, const float* sin, bf16* q, bf16* k, bf16* v, int64_t B,
                    int64_t T, int64_t H, int64_t KV, int64_t D, Stream s = nullptr);
// Its transpose: dqkv (overwritten) from dq and dk (rotated back) and dv; no overlap.
void qkv_merge_rope_backward(const bf16* dq, const bf16* dk, const bf16* dv, const float* cos, const float* sin,
                             bf16* dqkv, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, Stream s = nullptr);

}  // namespace lethe::cuda
