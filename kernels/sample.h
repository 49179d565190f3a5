// Drawing ids from a softmax over a vocabulary shard, for the random-labels term's
// reference-drawn labels. The logits stay where they live (a device chunk, or one tp
// rank's columns); only [N]-sized statistics and short candidate lists reach the host,
// which engine/parallel/vocab_sample.cpp joins over the tensor-parallel group.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

// Inverse CDF over a shard, in column order: for each row i with target[i] >= 0, arg[i] =
// first + j for the first column j whose running sum of exp(x_j - rowmax[i]) (the
// difference and the sum in double, as cross_entropy_shard_sumexp with
// difference_in_double) exceeds target[i]; first + Vr - 1 when no column does (the
// target at or past the shard's total by rounding). Rows with target < 0 (or NaN) get -1.
// logits[N, Vr]; rowmax[N] in the logits' dtype on the CPU, f32 on a device; target[N] f64;
// arg[N] i32.
void inverse_cdf_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& target, int64_t first,
                       Tensor& arg);

// The K = values.dim(1) most likely columns of each row of a shard, most likely first and
// ties by smaller id (a total order: the same list on every device): values[N, K] (the
// logits' dtype on the CPU, f32 on a device), ids[N, K] i32 as whole-vocabulary ids (first
// + column). A shard with fewer than K columns pads with -inf and -1. NaN sorts as -inf.
void topk_shard(const Tensor& logits, int64_t first, Tensor& values, Tensor& ids);

}  // namespace lethe::ops
