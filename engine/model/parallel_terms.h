// The pieces of the unlearning terms that read the whole vocabulary, for a model on any
// process grid. A tp rank holds [N, V/tp] columns of the logits, so the kl and adversarial
// terms and the Min-K%++ statistics go through the vocabulary-parallel ops here instead of
// looping over a logits row; a one-process model is the one-rank case.
#pragma once
#include "engine/core/tensor.h"
#include "engine/model/llama.h"

namespace lethe {

// A frozen reference's logits rows, chunk by chunk, after its forward_trunk: the rows its
// partner's head_pass visits, on the host in the partner's compute dtype. One buffer of the
// largest chunk (on the reference's device).
class ReferenceRows {
 public:
  explicit ReferenceRows(LlamaModel& ref) : ref_(ref) {}
  Tensor rows(int64_t r0, int64_t r1, DType dtype);
  // The rows beside the model's chunk of logits: on the device, the reference's own
  // buffer (no copy); on the CPU, a host copy in the chunk's dtype.
  Tensor rows_like(int64_t r0, int64_t r1, const Tensor& chunk);

 private:
  Tensor computed(int64_t r0, int64_t r1);  // into buf_, on the reference's device
  LlamaModel& ref_;
  Tensor buf_;
};

// The kl term: mean over the real positions of the global batch (every dp rank's rows)
// of KL(p_ref || p_theta). With grad, adds scale * dKL/dtheta into m.grads(). Returns the
// KL of the global batch (the same on every rank). tokens, targets: this rank's rows.
// Both models run their head in chunks: no [N, V] logits.
double kl_to_reference(LlamaModel& m, LlamaModel& ref, const Tensor& tokens, const Tensor& targets, double scale,
                       bool grad);

// The adversarial term's labels: at every real position, the reference model's most likely
// token other than the true one (kIgnoreIndex stays). [B, T] i32.
Tensor adversarial_targets(LlamaModel& ref, const Tensor& tokens, const Tensor& targets);

// Min-K%++ moments of log p under the model's own distribution for the rows of its last
// forward: mu[N], sigma[N] (f64), as eval/mia's logit_moments.
void logprob_moments(LlamaModel& m, Tensor& mu, Tensor& sigma);

}  // namespace lethe
