// Unlearning loss terms. Every method of the seed study and its successors is a weighted
// sum of these over data streams (forget / retain / general): GA is nll on forget with
// weight -1, GA+GD adds nll on retain, GA+KL adds kl on retain, and so on. A term computes
// its loss on one batch and adds weight * dL/dtheta into the model's gradients.
#pragma once
#include <cstdint>
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
  std::string type;        // nll, random_labels, adversarial, kl, npo, simnpo, rmu_forget, rmu_retain
  std::string stream;      // forget, retain or general
  double weight = 1.0;     // signed: -1 on nll is gradient ascent
  double beta = 0.1;       // npo, simnpo: inverse temperature
  double delta = 0.0;      // simnpo: margin
  int64_t layer = -1;      // rmu: residual stream after this layer (0-based)
  double steer = 6.5;      // rmu_forget: scale c of the random control vector
  uint64_t seed = 0;       // random_labels, rmu: randomness
  std::string name() const;  // e.g. "nll@forget"
};

// The known term types, for validation and --help.
const std::vector<std::string>& term_types();

class Term {
 public:
  explicit Term(TermSpec s) : spec_(std::move(s)) {}
  virtual ~Term() = default;
  const TermSpec& spec() const { return spec_; }
  // True when the term reads the frozen original model (kl, adversarial, rmu_retain).
  virtual bool needs_reference() const { return false; }
  // One pass over the stream with the original model before any update (NPO caches the
  // reference log-likelihood of every forget sequence here).
  virtual void prepare(LlamaModel& original, const SequenceSampler& stream, int64_t batch_size) {}
  // The loss on this batch, without touching gradients.
  virtual double value(LlamaModel& m, const UnlearnBatch& b) = 0;
  // Adds scale * dL/dtheta into m.grads() and returns L.
  virtual double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) = 0;

 protected:
  TermSpec spec_;
};

// reference: the frozen original model, required by terms whose needs_reference() is true.
std::unique_ptr<Term> make_term(const TermSpec& spec, LlamaModel* reference);

}  // namespace lethe
