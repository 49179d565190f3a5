// SwiGLU gate a = silu(g) * u on bf16 activations, computed in fp32.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

void swiglu_forward(const bf16* g, const bf16* u, bf16* a, int64_t n, Stream s = nullptr);
// dg, du (overwritten) from da; may not alias g or u.
void swiglu_backward(const bf16* da, const bf16* g, const bf16* u, bf16* dg, bf16* du, int64_t n,
                     Stream s = nullptr);

}  // namespace lethe::cuda
