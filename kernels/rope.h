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

}  // namespace lethe::ops
