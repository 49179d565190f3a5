// Token embedding on the GPU. Ids are validated on the host when the batch is built; the
// kernel turns an id outside [0, V) into a NaN row so it can never pass silently.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// ids[N], table[V, C] bf16 -> out[N, C] bf16.
void embedding_forward(const int32_t* ids, const bf16* table, bf16* out, int64_t N, int64_t V, int64_t C,
                       Stream s = nullptr);

// dtable[V, C] (fp32) += scatter of dout[N, C] by ids. Repeated ids add with atomics, so
// the summation order (and the last bits) can vary between runs.
void embedding_backward(const int32_t* ids, const bf16* dout, float* dtable, int64_t N, int64_t V, int64_t C,
                        Stream s = nullptr);

}  // namespace lethe::cuda
