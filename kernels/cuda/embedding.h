// Token embedding on the GPU. Ids are validated on the host when the batch is built; the
// kernel turns an id outside [0, vocab) into a NaN row so it can never pass silently.
// Under tensor parallelism the table is a shard: rows for ids [first, first + Vr) of a
// vocabulary of `vocab` (first = 0, Vr = vocab: the whole table).
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// ids[N], table[Vr, C] bf16 -> out[N, C] bf16; an id another shard holds gives a zero row.
void embedding_forward(const int32_t* ids, const bf16* table, bf16* out, int64_t N, int64_t first, int64_t Vr,
                       int64_t vocab, int64_t C, Stream s = nullptr);

// dtable[Vr, C] (fp32) += scatter of dout[N, C] by the ids this shard holds. Repeated ids
// add with atomics, so the summation order (and the last bits) can vary between runs.
void embedding_backward(const int32_t* ids, const bf16* dout, float* dtable, int64_t N, int64_t first, int64_t Vr,
                        int64_t vocab, int64_t C, Stream s = nullptr);

}  // namespace lethe::cuda
