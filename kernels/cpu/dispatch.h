// Internal: runs a generic lambda with the float or double scalar type matching a
// tensor's dtype. float64 exists for references and finite-difference checks; bf16
// compute is GPU-only. (A lambda, not a macro, so OpenMP pragmas work inside.)
#pragma once
#include "engine/core/tensor.h"

namespace lethe::cpu {

template <typename F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: f(float{}); break;
    case DType::f64: f(double{}); break;
    default: LETHE_FAIL(op, ": CPU kernels compute in f32 or f64, got ", dtype_name(dt));
  }
}

}  // namespace lethe::cpu
