// Token embedding lookup.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// ids[N] i32, table[V, C] -> out[N, C]. An id outside [0, V) is an error naming it.
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);

// dtable[V, C] += scatter of dout[N, C] by ids (rows for repeated ids add up).
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

// The vocabulary-parallel forms (Megatron-LM's VocabParallelEmbedding): table[Vr, C] holds
// ids [first, first + Vr) of a vocabulary of `vocab`. The forward writes a zero row for an
// id of the vocabulary that another shard holds (this shard's share of the group's sum);
// the backward adds only the rows this shard holds. An id outside [0, vocab) is an error
// naming it (on a device: a NaN row, which the numerics guard names). first = 0 and vocab =
// V are the plain functions above.
void embedding_forward_shard(const Tensor& ids, const Tensor& table, int64_t first, int64_t vocab, Tensor& out);
void embedding_backward_shard(const Tensor& ids, const Tensor& dout, int64_t first, int64_t vocab, Tensor& dtable);

}  // namespace lethe::ops
