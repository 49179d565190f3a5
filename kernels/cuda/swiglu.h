// SwiGLU gate a = silu(g) * u on bf16 activations, computed in fp32, reading g and u from
// the fused gate/up projection's output (kernels/swiglu.h).
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// gu [rows, 2F] (gate, then up, in each row) -> a [rows, F]; a may not overlap gu.
void swiglu_forward(const bf16* gu, bf16* a, int64_t rows, int64_t F, Stream s = nullptr);
// da [rows, F] -> dgu [rows, 2F] (overwritten, laid out as gu); dgu may not overlap gu or da.
void swiglu_backward(const bf16* da, const bf16* gu, bf16* dgu, int64_t rows, int64_t F, Stream s = nullptr);

}  // namespace lethe::cuda
