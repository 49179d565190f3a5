// Rotary position embedding in transformers' Llama layout (rotate_half): the pair for
// channel i is (i, i + D/2), not (2i, 2i+1) as in Meta's original checkpoints.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace lethe::ops {

// Frequency scaling for long context. type: "none", "linear" (positions / factor) or
// "llama3" (Llama-3.1's wavelength-dependent blend).
struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// inv_freq[D/2] for head dimension D, base theta, with scaling applied (computed in float64).
std::vector<double> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling);

// cos, sin [T, D/2] for positions 0..T-1, in dtype `dt`.
void rope_tables(const std::vector<double>& inv_freq, int64_t T, DType dt, Tensor& cos, Tensor& sin);

// x[B, T, H, D] -> y (may alias x). Row t of each sequence uses position t.
void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& y);
// Transpose of the rotation: dx from dy (may alias).
void rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, Tensor& dx);

// The fused q/k/v projection (one GEMM against [W_q; W_k; W_v]) writes qkv [B*T, (H + 2 KV) D]:
// each token's H query heads, then its KV key heads, then its KV value heads. This splits it
// into the attention's q [B, T, H, D] and k [B, T, KV, D], rotated as rope_forward rotates
// them, and v [B, T, KV, D], copied. No output may overlap qkv.
void qkv_split_rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& k, Tensor& v);
// Its transpose: dqkv (overwritten, laid out as qkv) from the attention's dq and dk,
// rotated back as rope_backward does, and dv: the fused projection's dy.
void qkv_merge_rope_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& cos,
                             const Tensor& sin, Tensor& dqkv);

}  // namespace lethe::ops
