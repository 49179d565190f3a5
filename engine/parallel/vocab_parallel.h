// Vocabulary-parallel embedding and losses (Megatron-LM's VocabParallelEmbedding and
// vocab_parallel_cross_entropy). Each tp rank holds rows [vocab_start, vocab_start + Vr)
// of the embedding / output projection, so logits arrive as a [N, Vr] shard per rank.
// Every statistic over the vocabulary is built from per-rank partial results and small
// [N]-sized all-reduces; the full [N, V] logits are never gathered.
//
// The same functions run with a one-rank group (vocab_start 0, Vr = V) and then equal the
// single-process kernels. Logits are f32 or f64; sums accumulate in double. The embedding,
// the cross-entropy and KL also take device tensors (bf16 activations and logits): their
// per-shard work, the [N]-sized all-reduces and the statistics' last step run on the
// device (kernels/embedding.h, kernels/cross_entropy.h), and the forms that add their
// loss into a device scalar leave the host nothing to wait for, so a loss computed chunk by
// chunk is read once at the end. The moments and the argmax bring [N] results to the host.
#pragma once
#include <cstdint>

#include "engine/core/tensor.h"
#include "engine/parallel/communicator.h"

namespace lethe {

struct VocabShard {
  int64_t start = 0;  // first vocabulary id held by this rank
  int64_t size = 0;   // ids held (Vr)
  int64_t vocab = 0;  // the whole vocabulary (V)
};

// ids[N] i32 (global ids), table[Vr, C] -> out[N, C], summed over the group (each id's
// row lives on exactly one rank). An id outside [0, V) is an error naming it.
void vocab_parallel_embedding_forward(const Tensor& ids, const Tensor& table, const VocabShard& vs, Tensor& out,
                                      Communicator& tp);
// dtable[Vr, C] += rows of dout[N, C] whose id this rank holds. No communication.
void vocab_parallel_embedding_backward(const Tensor& ids, const Tensor& dout, const VocabShard& vs, Tensor& dtable);

// lse[N] = log sum_v exp(logits[., v]) over the whole vocabulary (max all-reduce, then a
// sum all-reduce of exp(x - max)).
void vocab_parallel_logsumexp(const Tensor& logits, Tensor& lse, Communicator& tp);

// Weighted cross-entropy as ops::cross_entropy_forward: loss = -sum_i w_i logp_i, the same
// on every rank of the group. Fills logprobs[N] and lse[N] (for the backward).
double vocab_parallel_cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                            const VocabShard& vs, Tensor& logprobs, Tensor& lse, Communicator& tp);
// The same, adding the loss to loss[0] (f64 [1] on the logits' device) instead of
// returning it: no host wait on a device.
void vocab_parallel_cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                          const VocabShard& vs, Tensor& logprobs, Tensor& lse, Tensor& loss,
                                          Communicator& tp);
// dlogits[N, Vr] = dloss * w_i * (softmax - onehot(target)), this rank's columns. No
// communication: lse already holds the whole-vocabulary normaliser.
void vocab_parallel_cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights,
                                           const Tensor& lse, const VocabShard& vs, double dloss, Tensor& dlogits);

// KL(q || p) per row, q = softmax(ref_logits), p = softmax(logits), both sharded alike.
// Returns sum_i row_weight_i * KL_i (rows with weight 0 skipped); when dlogits is given it
// receives grad_scale times d/dlogits of that sum: grad_scale * row_weight_i * (p - q) on
// this rank's columns (0 on skipped rows), rounded once. row_weight[N] is f64 (f32 is
// widened), best on the logits' device (else it is copied there on each call).
// The logits (and dlogits) may be on a device: the per-shard work runs as ops
// (ops::cross_entropy_shard_*, ops::kl_shard, ops::weighted_row_sum).
double vocab_parallel_kl(const Tensor& ref_logits, const Tensor& logits, const Tensor& row_weight, Tensor* dlogits,
                         Communicator& tp, double grad_scale = 1.0);
// The same, adding the weighted sum to total[0] (f64 [1] on the logits' device): no host
// wait on a device.
void vocab_parallel_kl(const Tensor& ref_logits, const Tensor& logits, const Tensor& row_weight, Tensor* dlogits,
                       Communicator& tp, double grad_scale, Tensor& total);

// Min-K%++ moments of log p(z) under z ~ p = softmax(logits): mu[N] = sum_z p log p,
// sigma[N] = sqrt(sum_z p (log p - mu)^2) (two passes, as eval/mia does). f64 outputs.
void vocab_parallel_logprob_moments(const Tensor& logits, Tensor& mu, Tensor& sigma, Communicator& tp);

// For each row, the most likely id other than the target (the first on ties, as a
// one-rank scan finds it): the adversarial-label term's target. out[N] i32; rows whose
// target is ignored keep kIgnoreIndex.
void vocab_parallel_argmax_excluding(const Tensor& logits, const Tensor& targets, const VocabShard& vs, Tensor& out,
                                     Communicator& tp);
// The most likely id of each row (first on ties): greedy decoding. out[N] i32.
void vocab_parallel_argmax(const Tensor& logits, const VocabShard& vs, Tensor& out, Communicator& tp);

}  // namespace lethe
