// Sampling over a vocabulary shard (kernels/sample.h): an inverse CDF and a top-K list per
// row, one block per row, reading bf16 logits where the head wrote them.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// kernels/sample.h's inverse_cdf_shard: arg[i] = first + the first column whose running sum
// of exp(x - rowmax[i]) (double) exceeds target[i] (the last column if none); -1 where
// target[i] < 0. The running sum is formed per thread segment and then across segments,
// so it differs from the CPU's column-order sum by rounding only: a draw can differ only
// when the target lies within that rounding of a column's boundary.
void inverse_cdf_shard(const bf16* logits, const float* rowmax, const double* target, int64_t first, int32_t* arg,
                       int64_t N, int64_t V, Stream s = nullptr);

// kernels/sample.h's topk_shard: values[N, K] f32, ids[N, K] (first + column), most likely
// first, ties by smaller id, NaN as -inf, padded with (-inf, -1). K selection passes over
// each row (the row stays in L1/L2): meant for K up to a few hundred.
void topk_shard(const bf16* logits, int64_t first, float* values, int32_t* ids, int64_t N, int64_t V, int64_t K,
                Stream s = nullptr);

}  // namespace lethe::cuda
