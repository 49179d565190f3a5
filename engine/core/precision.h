// The precision policy a model and its optimizer run under (docs/cuda.md, "Mixed
// precision"). It is a policy, not a storage type: on the CPU a bf16 model stores f32
// tensors whose values are rounded to bf16 exactly where the GPU engine stores bf16, so
// the mixed-precision model runs, and is tested, without a GPU.
#pragma once
#include <string>

#include "engine/core/bf16.h"
#include "engine/core/error.h"
#include "engine/core/tensor.h"

namespace lethe {

enum class Precision {
  f32,   // compute in the tensors' own dtype (f32, or f64 for references); no extra rounding
  bf16,  // bf16 weights and activations, fp32 weight gradients, fp32 master weights and moments
};

inline const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "f32"; }

// The config key's values: "bf16" or "f32". `what` names the key in the error.
inline Precision parse_precision(const std::string& s, const std::string& what = "precision") {
  if (s == "bf16") return Precision::bf16;
  if (s == "f32") return Precision::f32;
  LETHE_FAIL(what, ": must be bf16 or f32, got '", s, "'");
}

// Rounds every element of an f32 tensor to the nearest bf16 value (ties to even), in
// place: the CPU twin of storing it as bf16. Returns how many elements changed (on a
// device, where the rounding is a cast there and back, 0: nothing is counted).
inline int64_t round_to_bf16_(Tensor& t) {
  check_dtype(t, DType::f32, "round_to_bf16_", "tensor");
  if (t.device() != Device::cpu) {
    t.copy_from(t.to(DType::bf16));
    return 0;
  }
  float* x = t.data<float>();
  const int64_t n = t.numel();
  int64_t changed = 0;
#pragma omp parallel for schedule(static) reduction(+ : changed)
  for (int64_t i = 0; i < n; ++i) {
    const float r = round_bf16(x[i]);
    changed += !is_bf16_value(x[i]);
    x[i] = r;
  }
  return changed;
}

// Elements of an f32 tensor that are not bf16 values (NaN counts as representable).
inline int64_t count_not_bf16(const Tensor& t) {
  check_dtype(t, DType::f32, "count_not_bf16", "tensor");
  const float* x = t.data<float>();
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) n += !is_bf16_value(x[i]);
  return n;
}

}  // namespace lethe
