// Unlearning loss terms. Every method of the seed study and its successors is a weighted
// sum of these over data streams (forget / retain / general): GA is nll on forget with
// weight -1, GA+GD adds nll on retain, GA+KL adds kl on retain, NPO, SimNPO, WGA, UNDIAL,
// flooded ascent and RMU reweight or redirect the same gradients. A term computes its loss
// on one batch and adds weight * dL/dtheta into the model's gradients.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/data/sequence_sampler.h"
#include "engine/model/llama.h"

namespace lethe {

// Under data parallelism a term sees this dp rank's rows of the global batch; every mean
// is over the global batch (counts and losses are summed over the model's dp group), so
// the losses and summed gradients equal one process's.
struct UnlearnBatch {
  Tensor tokens, targets;         // [B, T] i32; targets use ops::kIgnoreIndex for padding
  std::vector<int64_t> seq_ids;   // the stream sampler's sequence index of each row
  int64_t step = 0;               // optimizer step (seeds per-step randomness)
  int64_t row0 = 0;               // first row of this batch within the global batch
  int64_t global_rows = 0;        // rows of the global batch (0: B, one process)
};

struct TermSpec {
  std::string type;        // one of term_types()
  std::string stream;      // forget, retain or general
  double weight = 1.0;     // signed: -1 on nll is gradient ascent
  double beta = 0.1;       // npo, simnpo: inverse temperature (per-token scale); rmu_forget with
                           // steering adaptive: c = beta * mean ||h_l|| of the original on forget data
  double delta = 0.0;      // simnpo: margin (SimNPO's gamma)
  int64_t layer = -1;      // rmu: residual stream after this layer (0-based)
  double steer = 6.5;      // rmu_forget, steering fixed: scale c of the random control vector
  std::string steering = "fixed";  // rmu_forget: fixed (c = steer) or adaptive (c from beta)
  std::string label_source = "reference";  // random_labels: reference (sampled) or uniform
  int64_t top_k = 0;       // random_labels from the reference: only the k most likely ids (0: all)
  double top_p = 1.0;      // ...then only the most likely ids whose probability reaches top_p
  double alpha = 1.0;      // wga: token weight p(y_t)^alpha
  double gamma = 1.0;      // undial: the target token's reference logit is lowered by gamma
  double flood = 0.0;      // flood: target NLL per token of each sequence (nats, > 0)
  uint64_t seed = 0;       // random_labels, rmu: randomness
  std::string name() const;  // e.g. "nll@forget"
};

// The known term types, for validation and --help.
const std::vector<std::string>& term_types();

// Checks the spec's values for its type; `where(key)` names the offending key in the
// error (a recipe passes its file and key path). make_term runs it too.
void validate_term_spec(const TermSpec& s, const std::function<std::string(const std::string&)>& where);

// True when the term reads the frozen original model during training (kl, adversarial,
// rmu_retain, undial, random_labels drawn from the reference): the caller should pass it
// to make_term.
bool term_reads_reference(const TermSpec& s);

class Term {
 public:
  explicit Term(TermSpec s) : spec_(std::move(s)) {}
  virtual ~Term() = default;
  const TermSpec& spec() const { return spec_; }
  // True when the term reads the frozen original model (term_reads_reference).
  virtual bool needs_reference() const { return false; }
  // One pass over the stream with the original model before any update (NPO caches the
  // reference log-likelihood of every forget sequence here, adaptive RMU the activation
  // norm; a term that reads the frozen original and was handed the model being trained
  // copies it here).
  virtual void prepare(LlamaModel& original, const SequenceSampler& stream, int64_t batch_size) {}
  // The loss on this batch, without touching gradients.
  virtual double value(LlamaModel& m, const UnlearnBatch& b) = 0;
  // Adds scale * dL/dtheta into m.grads() and returns L.
  virtual double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) = 0;

 protected:
  TermSpec spec_;
};

// The random_labels term's labels for a batch: every real target replaced by a draw from
// ref's next-token distribution at the same position (label_source reference, top_k /
// top_p), or by a uniform id (uniform); kIgnoreIndex stays. [B, T] i32, the same for any
// dp / tp layout (Philox(seed, step) at the element's place in the global batch).
Tensor draw_random_labels(const TermSpec& s, LlamaModel& ref, const UnlearnBatch& b);

// reference: the frozen original model, required by terms whose needs_reference() is true.
// A caller that keeps no frozen copy may pass the model it trains (still holding the
// original weights) and call prepare() with that same model before the first update: the
// term then keeps its own frozen copy.
std::unique_ptr<Term> make_term(const TermSpec& spec, LlamaModel* reference);

}  // namespace lethe
