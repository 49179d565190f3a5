// Cross-entropy over the vocabulary with per-token log-probabilities and signed
// per-token weights. loss = -sum_i w_i * log p(target_i). Weights are the whole policy:
// 1/n_valid gives transformers' mean loss; a negative weight is gradient ascent, which
// is what the unlearning terms are built from.
#pragma once
#include "engine/core/tensor.h"

namespace lethe::ops {

constexpr int32_t kIgnoreIndex = -100;  // transformers' ignore_index: no loss, no gradient

// logits[N, V], targets[N] i32, weights[N] (f32 or f64) -> logprobs[N] (0 where ignored),
// lse[N] (saved for the backward). Returns the weighted loss, accumulated in double.
double cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                             Tensor& lse);
// The same, adding the weighted loss to loss[0] (f64 [1], on the logits' device) instead
// of returning it: a device keeps the sum there, so a loss computed chunk by chunk costs
// the host one read at the end, not one wait per chunk. On the CPU, loss[0] += the value
// the form above returns.
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                           Tensor& lse, Tensor& loss);

// dlogits[N, V] = dloss * w_i * (softmax_i - onehot(target_i)) (overwritten; 0 on ignored rows).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                            double dloss, Tensor& dlogits);

// The vocabulary-parallel pieces (Megatron-LM's vocab_parallel_cross_entropy), which
// engine/parallel/vocab_parallel.cpp joins over the tensor-parallel group with [N]-sized
// all-reduces. logits[N, Vr] hold ids [first, first + Vr) of a vocabulary of `vocab`;
// targets are ids of the whole vocabulary (or kIgnoreIndex).
//
// rowmax[N] = max_j logits[i, j]; target_logit[N] = the target's logit where this shard
// holds it, 0 elsewhere and on ignored rows (so the group's sum is the target's logit).
// Both are in the logits' dtype on the CPU (f32 for bf16 logits on a device: exact).
// targets and target_logit may both be undefined (only the maximum is wanted).
void cross_entropy_shard_max(const Tensor& logits, const Tensor& targets, int64_t first, int64_t vocab, Tensor& rowmax,
                             Tensor& target_logit);
// sumexp[N] (f64) = sum_j exp(logits[i, j] - rowmax[i]), the difference in rowmax's dtype
// (the cross-entropy's arithmetic) or, with difference_in_double, in double (the Min-K%++
// moments'), and the sum in double.
void cross_entropy_shard_sumexp(const Tensor& logits, const Tensor& rowmax, Tensor& sumexp,
                                bool difference_in_double = false);
// Finishes the group's row statistics where they live (the tp cross-entropy's last step,
// kept on the device so that no chunk waits for the host): from rowmax m[N] (dtype T: f32
// or f64), sumexp s[N] (f64) and target_logit z[N] (T), all summed or maxed over the
// group, lse[N] = T(m + log s), stored in lse's dtype (f32 or f64). With targets (i32 [N])
// also logprobs[N] = z - lse in T (0 where ignored), stored in logprobs' dtype, and loss[0]
// (f64 [1]) += -sum_i w_i logprobs_i over the rows not ignored, the rows summed in order in
// double before the one addition (weights [N], f32 or f64). Without targets, target_logit,
// weights, logprobs and loss are undefined.
void cross_entropy_shard_finish(const Tensor& rowmax, const Tensor& sumexp, const Tensor& target_logit,
                                const Tensor& targets, const Tensor& weights, Tensor& lse, Tensor& logprobs,
                                Tensor& loss);
// total[0] (f64 [1]) += sum_i weights_i * values_i, values and weights f64 [N], the rows
// summed in order in double before the one addition: the KL's weighted total, on the
// device that holds the rows.
void weighted_row_sum(const Tensor& values, const Tensor& weights, Tensor& total);
// The Min-K%++ moments of log p under p = softmax(row) over a shard, from the whole row's
// maximum m (rowmax, as cross_entropy_shard_max gives it) and s = sum exp(x - m) in double
// (sumexp with difference_in_double): with lse = m + log s and l_j = x_j - lse, out[N]
// (f64) = sum_j exp(x_j - m) / s * l_j, or, given center[N] (f64), sum_j exp(x_j - m) / s *
// (l_j - center)^2. All in double, each row's sum in column order.
void softmax_moment_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp, const Tensor& center,
                          Tensor& out);
// cross_entropy_backward over a shard: lse is the whole vocabulary's; the onehot is
// subtracted only where this shard holds the target.
void cross_entropy_backward_shard(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                                  int64_t first, int64_t vocab, double dloss, Tensor& dlogits);

// The most likely id of each row over a shard, for greedy decoding, accuracy and the
// adversarial labels: best[N] (the logits' dtype on the CPU, f32 on a device) = the row's
// largest logit and arg[N] (i32) = the global id of its first occurrence, skipping the id
// exclude[i] (a whole-vocabulary id; exclude may be undefined). A row with nothing left
// (or only NaN) gets -inf and -1.
void argmax_shard(const Tensor& logits, const Tensor& exclude, int64_t first, Tensor& best, Tensor& arg);

// KL(q || p) over a shard of the vocabulary, q = softmax(ref_logits), p = softmax(logits),
// both [N, Vr] of one dtype, given the whole vocabulary's log-sum-exps lse_q, lse_p [N]
// (f64). kl[N] (f64) = sum over this shard's columns of q (log q - log p), in double (an
// underflowed q adds nothing); dlogits (optional, the logits' dtype) = grad_scale * w_i *
// (p - q), formed in double and stored once. Rows whose row_weight [N] (f64) is 0 get kl 0
// and a zero gradient row.
void kl_shard(const Tensor& ref_logits, const Tensor& logits, const Tensor& lse_q, const Tensor& lse_p,
              const Tensor& row_weight, double grad_scale, Tensor& kl, Tensor* dlogits);

// UNDIAL's target rows: adds `value` to x[i, targets[i] - first] for each row whose target
// (a whole-vocabulary id, i32 [N]) falls in this shard [first, first + Vr) of x [N, Vr];
// kIgnoreIndex and other shards' ids change nothing. In x's arithmetic, stored in x's
// dtype (f32: fl(x + fl(value)); bf16 on a device: rounded to bf16).
void add_at_targets_(Tensor& x, const Tensor& targets, int64_t first, double value);

}  // namespace lethe::ops
