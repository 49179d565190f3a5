// Vocabulary reductions over logits rows, each one block per row in a single read pass
// for the statistics and one for the output, so neither the softmax nor the
// log-probabilities over the vocabulary are ever stored:
//   - cross-entropy with per-token log-probs and signed per-token weights (the unlearning
//     terms are weightings of it: a negative weight ascends);
//   - KL(softmax(ref) || softmax(logits)) per row and its gradient (the KL-to-reference term);
//   - the mean and standard deviation of log p over the vocabulary (Min-K%++ scores).
// The caller chunks the tokens (compute logits for a few thousand rows, reduce, drop),
// so the [N, V] logits never exist for the whole batch at once.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

constexpr int32_t kIgnoreIndex = -100;  // same as ops::kIgnoreIndex

// logits[N, V] bf16, targets[N] (kIgnoreIndex: no loss, no gradient), weights[N] fp32 ->
// logprobs[N] fp32 (0 where ignored), lse[N] fp32. When dlogits is non-null it also gets
// dloss * w_i * (softmax_i - onehot(target_i)) (0 on ignored rows): the backward fused in
// the same kernel. dlogits may alias logits.
void cross_entropy_forward(const bf16* logits, const int32_t* targets, const float* weights, float* logprobs,
                           float* lse, bf16* dlogits, float dloss, int64_t N, int64_t V, Stream s = nullptr);

// The unfused backward from the saved lse (dlogits may alias logits).
// logits[N, V] hold ids [first, first + V) of `vocab` (first = 0, V = vocab: the whole).
void cross_entropy_backward(const bf16* logits, const int32_t* targets, const float* weights, const float* lse,
                            float dloss, bf16* dlogits, int64_t N, int64_t first, int64_t V, int64_t vocab,
                            Stream s = nullptr);

// The vocabulary-parallel row statistics (kernels/cross_entropy.h, cross_entropy_shard_*):
// rowmax[N] and target_logit[N] (both null-able together with targets), sumexp[N] in double.
void cross_entropy_shard_max(const bf16* logits, const int32_t* targets, float* rowmax, float* target_logit,
                             int64_t N, int64_t first, int64_t V, Stream s = nullptr);
void cross_entropy_shard_sumexp(const bf16* logits, const float* rowmax, double* sumexp, bool difference_in_double,
                                int64_t N, int64_t V, Stream s = nullptr);
// The Min-K%++ moment over a shard (kernels/cross_entropy.h); center null: the mean.
void softmax_moment_shard(const bf16* logits, const float* rowmax, const double* sumexp, const double* center,
                          double* out, int64_t N, int64_t V, Stream s = nullptr);

// kernels/cross_entropy.h's argmax_shard (exclude may be null).
void argmax_shard(const bf16* logits, const int32_t* exclude, int64_t first, float* best, int32_t* arg, int64_t N,
                  int64_t V, Stream s = nullptr);

// kernels/cross_entropy.h's kl_shard: kl[N] (double) and, when dlogits is given,
// bf16(grad_scale * w * (p - q)); lse_q, lse_p, row_weight [N] double.
void kl_shard(const bf16* ref_logits, const bf16* logits, const double* lse_q, const double* lse_p,
              const double* row_weight, double grad_scale, double* kl, bf16* dlogits, int64_t N, int64_t V,
              Stream s = nullptr);

// kernels/cross_entropy.h's add_at_targets_ on bf16 x [N, V] (a shard from `first`):
// x[i, targets[i] - first] = bf16(x + value) where the target falls in the shard.
void add_at_targets(bf16* x, const int32_t* targets, int64_t first, float value, int64_t N, int64_t V,
                    Stream s = nullptr);

// *loss (device, double) = -sum_i w_i * logprobs_i over non-ignored rows, summed in a
// fixed order (the same value every run); with accumulate, added to *loss instead.
void weighted_nll(const float* logprobs, const int32_t* targets, const float* weights, double* loss, int64_t N,
                  bool accumulate, Stream s = nullptr);

// kernels/cross_entropy.h's cross_entropy_shard_finish: lse into lse_f32 or lse_f64 (one
// of them null); with targets (else null, as target_logit, weights, logprobs and loss),
// logprobs and *loss += -sum_i w_i logprobs_i (weighted_nll's order).
void cross_entropy_shard_finish(const float* rowmax, const double* sumexp, const float* target_logit,
                                const int32_t* targets, const float* weights, float* lse_f32, double* lse_f64,
                                float* logprobs, double* loss, int64_t N, Stream s = nullptr);
// *total += sum_i weights_i * values_i (double, a fixed order).
void weighted_row_sum(const double* values, const double* weights, double* total, int64_t N, Stream s = nullptr);

// kl[N] fp32 = KL(softmax(ref_i) || softmax(logits_i)). When dlogits is non-null it gets
// row_scale_i * (softmax(logits_i) - softmax(ref_i)) (written, or added when accumulate;
// may alias logits only when not accumulating). row_scale may be null when dlogits is.
void kl_to_reference(const bf16* logits, const bf16* ref_logits, const float* row_scale, float* kl, bf16* dlogits,
                     bool accumulate, int64_t N, int64_t V, Stream s = nullptr);

// mu[N], sigma[N] fp32: mean and standard deviation of log p_j under p_j (two-pass, as the
// CPU logit_moments, since E[lp^2] - mu^2 cancels for peaked rows).
void logit_moments(const bf16* logits, float* mu, float* sigma, int64_t N, int64_t V, Stream s = nullptr);
void logit_moments(const float* logits, float* mu, float* sigma, int64_t N, int64_t V, Stream s = nullptr);

}  // namespace lethe::cuda
