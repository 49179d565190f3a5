// The pieces of the unlearning terms that read the whole vocabulary, for a model on any
// process grid. forward_logits returns this tp rank's [N, V/tp] columns, so the kl and
// adversarial terms and the Min-K%++ statistics go through the vocabulary-parallel ops
// here instead of looping over a logits row. With a one-process model they compute what
// engine/unlearn/terms.cpp and engine/eval/mia.cpp compute.
#pragma once
#include "engine/core/tensor.h"
#include "engine/model/llama.h"

namespace lethe {

// The kl term: mean over the real positions of the global batch (every dp rank's rows)
// of KL(p_ref || p_theta). With grad, adds scale * dKL/dtheta into m.grads(). Returns the
// KL of the global batch (the same on every rank). tokens, targets: this rank's rows.
double kl_to_reference(LlamaModel& m, LlamaModel& ref, const Tensor& tokens, const Tensor& targets, double scale,
                       bool grad);

// The adversarial term's labels: at every real position, the reference model's most likely
// token other than the true one (kIgnoreIndex stays). [B, T] i32.
Tensor adversarial_targets(LlamaModel& ref, const Tensor& tokens, const Tensor& targets);

// Min-K%++ moments of log p under the model's own distribution for the rows of its last
// forward: mu[N], sigma[N] (f64), as eval/mia's logit_moments.
void logprob_moments(LlamaModel& m, Tensor& mu, Tensor& sigma);

}  // namespace lethe
