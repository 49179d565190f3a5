// Drawing one id per row from the softmax of logits sharded over the tensor-parallel group
// (the random-labels term's reference-drawn labels), with the logits left where they live:
// on a device chunk or in each rank's [N, Vr] columns. Only [N] statistics and short
// candidate lists reach the host; the full [N, V] logits are never gathered.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/parallel/communicator.h"
#include "engine/parallel/vocab_parallel.h"

namespace lethe {

// Which ids a draw may take: the top_k most likely (0 or >= V: all, ties at the k-th value
// all kept), then the most likely of those up to the first whose cumulative probability
// (renormalised) exceeds top_p.
struct SampleFilter {
  int64_t top_k = 0;
  double top_p = 1.0;
};

// The one-row reference: the id for u in [0, 1) from a whole logits row x[V] in double, by
// inverse CDF over the kept ids, most likely first (in id order for the whole
// distribution, where no sort is needed). idx and e are scratch.
int32_t sample_row(const double* x, int64_t V, double u, const SampleFilter& f, std::vector<int32_t>& idx,
                   std::vector<double>& e);

// out[N] (i32, host) = the id sample_row draws from each row of the group's logits at u[i];
// rows with u[i] < 0 get -1. logits[N, Vr] are this rank's columns (f32/f64 on the CPU,
// bf16 on a device); u is the same on every rank.
//   - the whole distribution: the row's maximum and each shard's sum of exp(x - max), an
//     [N] all-gather, and an inverse CDF on the shard holding the target (ops::inverse_cdf_shard);
//     one rank draws exactly what sample_row draws; several add the per-shard sums in rank
//     order, which moves a draw only when u lies within a double's rounding of a boundary;
//   - top_k < V: each shard's k + 16 best (ops::topk_shard), merged on the host; a row whose
//     k-th value has more ties than the lists hold reads its whole row instead. Exactly
//     sample_row's draw on any layout;
//   - top_p < 1 over the whole vocabulary needs every row sorted: whole rows on the host.
// A row whose logits are not finite is an error naming `what` and the row.
void vocab_parallel_sample(const Tensor& logits, const std::vector<double>& u, const SampleFilter& f,
                           const VocabShard& vs, Tensor& out, Communicator& tp, const char* what);

}  // namespace lethe
