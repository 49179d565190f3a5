#include "engine/unlearn/terms.h"

#include <cmath>
#include <limits>
#include <unordered_map>

#include "engine/core/rng.h"
#include "engine/model/parallel_terms.h"
#include "kernels/cross_entropy.h"

namespace lethe {
namespace {

// ---- helpers ---------------------------------------------------------------------------

int64_t count_valid(const Tensor& targets) {
  int64_t n = 0;
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) n += t[i] != ops::kIgnoreIndex;
  return n;
}

// Weighted cross-entropy through the model: L = -sum w_i log p(target_i).
double ce(LlamaModel& m, const Tensor& tokens, const Tensor& targets, const Tensor& w, double scale, bool grad) {
  const double loss = m.forward(tokens, targets, &w);
  if (grad && scale != 0) m.backward(scale);
  return loss;
}

// Real targets of the whole global batch (every dp rank's rows).
int64_t count_valid_global(const LlamaModel& m, const Tensor& targets) {
  return m.grid().dp_group().all_reduce(count_valid(targets), ReduceOp::sum);
}

double sum_over_dp(const LlamaModel& m, double x) { return m.grid().dp_group().all_reduce(x, ReduceOp::sum); }

int64_t global_rows(const UnlearnBatch& b) { return b.global_rows > 0 ? b.global_rows : b.tokens.dim(0); }

Tensor mean_weights(const LlamaModel& m, const Tensor& targets) {
  const int64_t n = count_valid_global(m, targets);
  Tensor w = Tensor::zeros(targets.shape(), DType::f64);
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < targets.numel(); ++i)
    w.data<double>()[i] = (t[i] != ops::kIgnoreIndex && n) ? 1.0 / double(n) : 0.0;
  return w;
}

// Row softmax of a logits row in double.
void softmax_row(const float* x, const double* xd, int64_t V, std::vector<double>& p) {
  p.resize(size_t(V));
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < V; ++j) m = std::max(m, x ? double(x[j]) : xd[j]);
  double z = 0;
  for (int64_t j = 0; j < V; ++j) z += (p[j] = std::exp((x ? double(x[j]) : xd[j]) - m));
  for (double& v : p) v /= z;
}

void row_probs(const Tensor& logits, int64_t i, std::vector<double>& p) {
  const int64_t V = logits.dim(1);
  if (logits.dtype() == DType::f32) softmax_row(logits.data<float>() + i * V, nullptr, V, p);
  else softmax_row(nullptr, logits.data<double>() + i * V, V, p);
}

// Per-sequence sums of log p(target) over valid positions, from the last forward.
std::vector<double> sequence_logp(const LlamaModel& m, const Tensor& targets) {
  const int64_t B = targets.dim(0), T = targets.dim(1);
  std::vector<double> s(size_t(B), 0.0);
  const int32_t* t = targets.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < T; ++k)
      if (t[b * T + k] != ops::kIgnoreIndex)
        s[size_t(b)] += m.logprobs().dtype() == DType::f32 ? double(m.logprobs().data<float>()[b * T + k])
                                                           : m.logprobs().data<double>()[b * T + k];
  return s;
}

std::vector<int64_t> sequence_lengths(const Tensor& targets) {
  const int64_t B = targets.dim(0), T = targets.dim(1);
  std::vector<int64_t> n(size_t(B), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < T; ++k) n[size_t(b)] += targets.data<int32_t>()[b * T + k] != ops::kIgnoreIndex;
  return n;
}

double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
double sigmoid(double x) { return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x)); }

// ---- nll: mean token NLL (weight -1 = gradient ascent) -----------------------------------

class NllTerm : public Term {
 public:
  using Term::Term;
  double value(LlamaModel& m, const UnlearnBatch& b) override {
    return ce(m, b.tokens, targets(b), mean_weights(m, b.targets), 0, false);
  }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override {
    return ce(m, b.tokens, targets(b), mean_weights(m, b.targets), scale, true);
  }

 protected:
  virtual Tensor targets(const UnlearnBatch& b) { return b.targets; }
};

// ---- random labels: every real target replaced by a uniform random id -------------------

class RandomLabelsTerm : public NllTerm {
 public:
  RandomLabelsTerm(TermSpec s, int64_t vocab) : NllTerm(std::move(s)), vocab_(vocab) {}

 protected:
  Tensor targets(const UnlearnBatch& b) override {
    Tensor t = b.targets.clone();
    const Philox rng(spec_.seed, uint64_t(b.step) + 0x7a6e0000ull);
    int32_t* p = t.data<int32_t>();
    // Indexed by the element's place in the global batch: every dp layout draws the same ids.
    const int64_t first = b.row0 * b.targets.dim(1);
    for (int64_t i = 0; i < t.numel(); ++i)
      if (p[i] != ops::kIgnoreIndex) p[i] = int32_t(rng.below(uint64_t(first + i), uint64_t(vocab_)));
    return t;
  }
  int64_t vocab_;
};

// ---- adversarial: the original model's most likely token other than the true one -------

class AdversarialTerm : public NllTerm {
 public:
  AdversarialTerm(TermSpec s, LlamaModel* ref) : NllTerm(std::move(s)), ref_(ref) {}
  bool needs_reference() const override { return true; }

 protected:
  // Logits row t predicts target t (both already shifted), so the alternative is taken at
  // the same row as the label it replaces: no off-by-one.
  // adversarial_targets takes the argmax over the whole vocabulary from the tp shards
  // (the first on ties, as one scan over the row finds it).
  Tensor targets(const UnlearnBatch& b) override { return adversarial_targets(*ref_, b.tokens, b.targets); }
  LlamaModel* ref_;
};

// ---- kl: mean over real positions of KL(p_orig || p_theta) -------------------------------

class KlTerm : public Term {
 public:
  KlTerm(TermSpec s, LlamaModel* ref) : Term(std::move(s)), ref_(ref) {}
  bool needs_reference() const override { return true; }
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    // On a grid the logits are this rank's vocabulary columns and the rows this dp rank's:
    // the vocabulary-parallel KL normalises over the global batch.
    if (m.grid().parallel()) return kl_to_reference(m, *ref_, b.tokens, b.targets, scale, grad);
    const Tensor ref = ref_->forward_logits(b.tokens).to(DType::f64);
    const Tensor& logits = m.forward_logits(b.tokens);
    const int64_t N = logits.dim(0), V = logits.dim(1), n = count_valid(b.targets);
    if (n == 0) return 0;
    Tensor dl = Tensor::zeros({N, V}, logits.dtype());
    std::vector<double> p, q;
    double kl = 0;
    const int32_t* t = b.targets.data<int32_t>();
    for (int64_t i = 0; i < N; ++i) {
      if (t[i] == ops::kIgnoreIndex) continue;  // padding carries no distribution to match
      row_probs(ref, i, q);
      row_probs(logits, i, p);
      for (int64_t j = 0; j < V; ++j) {
        if (q[j] > 0) kl += q[j] * (std::log(q[j]) - std::log(std::max(p[j], 1e-300)));
        const double g = scale * (p[j] - q[j]) / double(n);
        if (dl.dtype() == DType::f32) dl.data<float>()[i * V + j] = float(g);
        else dl.data<double>()[i * V + j] = g;
      }
    }
    if (grad && scale != 0) m.backward_logits(dl);
    return kl / double(n);
  }
  LlamaModel* ref_;
};

// ---- npo: -(2/beta) mean_s log sigmoid(-beta (logp_theta(y_s) - logp_ref(y_s))) ----------

class NpoTerm : public Term {
 public:
  using Term::Term;
  void prepare(LlamaModel& original, const SequenceSampler& s, int64_t batch) override {
    // logp_ref(y) of every sequence of the stream, from the original model, once: NPO
    // needs no second model in memory.
    const int64_t T = s.seq_len();
    for (int64_t i0 = 0; i0 < s.n_sequences(); i0 += batch) {
      const int64_t B = std::min(batch, s.n_sequences() - i0);
      Tensor tok = Tensor::empty({B, T}, DType::i32), tgt = Tensor::empty({B, T}, DType::i32);
      for (int64_t r = 0; r < B; ++r) s.sequence(i0 + r, tok.data<int32_t>() + r * T, tgt.data<int32_t>() + r * T);
      original.forward(tok, tgt);
      const auto lp = sequence_logp(original, tgt);
      for (int64_t r = 0; r < B; ++r) ref_logp_[i0 + r] = lp[size_t(r)];
    }
  }
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    const int64_t B = b.tokens.dim(0), T = b.tokens.dim(1);
    LETHE_CHECK(int64_t(b.seq_ids.size()) == B, "npo: batch rows carry no sequence ids");
    const double Bg = double(global_rows(b));
    Tensor ones = Tensor::zeros({B, T}, DType::f64);
    const int32_t* t = b.targets.data<int32_t>();
    for (int64_t i = 0; i < B * T; ++i) ones.data<double>()[i] = t[i] != ops::kIgnoreIndex ? 1.0 : 0.0;
    m.forward(b.tokens, b.targets, &ones);
    const auto lp = sequence_logp(m, b.targets);
    double loss = 0;
    Tensor w = Tensor::zeros({B, T}, DType::f64);
    for (int64_t r = 0; r < B; ++r) {
      auto it = ref_logp_.find(b.seq_ids[size_t(r)]);
      LETHE_CHECK(it != ref_logp_.end(), "npo: sequence ", b.seq_ids[size_t(r)], " has no cached reference log-likelihood");
      const double d = lp[size_t(r)] - it->second, beta = spec_.beta;
      loss += -(2 / beta) * log_sigmoid(-beta * d) / Bg;
      // dL/dlogp(y_s) = (2/B) sigmoid(beta d); as a cross-entropy weight (CE = -logp): the negative.
      const double g = 2 * sigmoid(beta * d) / Bg;
      for (int64_t k = 0; k < T; ++k)
        if (t[r * T + k] != ops::kIgnoreIndex) w.data<double>()[r * T + k] = -g;
    }
    if (grad && scale != 0) {
      m.forward(b.tokens, b.targets, &w);
      m.backward(scale);
    }
    return sum_over_dp(m, loss);
  }
  std::unordered_map<int64_t, double> ref_logp_;
};

// ---- simnpo: -(2/beta) mean_s log sigmoid(beta * NLL_s / |y_s| - delta) ------------------
// (SimNPO, Fan et al. 2024: -(2/beta) log sigmoid(-(beta/|y|) log pi(y) - delta), i.e. with
// the length-normalised NLL; minimising it raises the forget NLL.)

class SimNpoTerm : public Term {
 public:
  using Term::Term;
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    const int64_t B = b.tokens.dim(0), T = b.tokens.dim(1);
    Tensor ones = Tensor::zeros({B, T}, DType::f64);
    const int32_t* t = b.targets.data<int32_t>();
    for (int64_t i = 0; i < B * T; ++i) ones.data<double>()[i] = t[i] != ops::kIgnoreIndex ? 1.0 : 0.0;
    m.forward(b.tokens, b.targets, &ones);
    const auto lp = sequence_logp(m, b.targets);
    const auto len = sequence_lengths(b.targets);
    const double Bg = double(global_rows(b));
    double loss = 0;
    Tensor w = Tensor::zeros({B, T}, DType::f64);
    for (int64_t r = 0; r < B; ++r) {
      if (len[size_t(r)] == 0) continue;
      const double n = double(len[size_t(r)]), beta = spec_.beta;
      const double x = beta * (-lp[size_t(r)]) / n - spec_.delta;
      loss += -(2 / beta) * log_sigmoid(x) / Bg;
      // dL/dNLL_s = -(2/(n B)) (1 - sigmoid(x)); NLL_s is the CE with weight 1 per token.
      const double g = -(2 / (n * Bg)) * (1 - sigmoid(x));
      for (int64_t k = 0; k < T; ++k)
        if (t[r * T + k] != ops::kIgnoreIndex) w.data<double>()[r * T + k] = g;
    }
    if (grad && scale != 0) {
      m.forward(b.tokens, b.targets, &w);
      m.backward(scale);
    }
    return sum_over_dp(m, loss);
  }
};

// ---- rmu: activations at a layer pushed to c*u (forget) or kept at the original's (retain)

class RmuTerm : public Term {
 public:
  RmuTerm(TermSpec s, LlamaModel* ref, int64_t dim) : Term(std::move(s)), ref_(ref) {
    // u: a fixed random unit vector (Li et al. 2024, "The WMDP Benchmark").
    u_.resize(size_t(dim));
    const Philox rng(spec_.seed, 0x524d55ull);
    double norm = 0;
    for (int64_t i = 0; i < dim; ++i) norm += (u_[size_t(i)] = rng.uniform(uint64_t(i))) * u_[size_t(i)];
    for (double& v : u_) v /= std::sqrt(norm);
  }
  bool needs_reference() const override { return spec_.type == "rmu_retain"; }
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  // Mean squared error over real positions and channels, as torch's mse_loss in RMU.
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    Tensor target;
    if (spec_.type == "rmu_retain") target = ref_->forward_hidden(b.tokens, spec_.layer).to(DType::f64);
    const Tensor& h = m.forward_hidden(b.tokens, spec_.layer);
    const int64_t N = h.dim(0), C = h.dim(1), n = count_valid_global(m, b.targets);
    if (n == 0) return 0;
    Tensor dh = Tensor::zeros({N, C}, h.dtype());
    const int32_t* t = b.targets.data<int32_t>();
    double loss = 0;
    for (int64_t i = 0; i < N; ++i) {
      if (t[i] == ops::kIgnoreIndex) continue;
      for (int64_t c = 0; c < C; ++c) {
        const double hv = h.dtype() == DType::f32 ? h.data<float>()[i * C + c] : h.data<double>()[i * C + c];
        const double tv = target.defined() ? target.data<double>()[i * C + c] : spec_.steer * u_[size_t(c)];
        const double d = hv - tv;
        loss += d * d;
        const double g = scale * 2 * d / double(n * C);
        if (dh.dtype() == DType::f32) dh.data<float>()[i * C + c] = float(g);
        else dh.data<double>()[i * C + c] = g;
      }
    }
    if (grad && scale != 0) m.backward_hidden(dh);
    return sum_over_dp(m, loss) / double(n * C);
  }
  LlamaModel* ref_;
  std::vector<double> u_;
};

}  // namespace

std::string TermSpec::name() const { return type + "@" + stream; }

const std::vector<std::string>& term_types() {
  static const std::vector<std::string> t{"nll", "random_labels", "adversarial", "kl",
                                          "npo", "simnpo",        "rmu_forget",  "rmu_retain"};
  return t;
}

std::unique_ptr<Term> make_term(const TermSpec& s, LlamaModel* reference) {
  LETHE_CHECK(s.stream == "forget" || s.stream == "retain" || s.stream == "general", "term ", s.type,
              ": stream '", s.stream, "' is not forget, retain or general");
  LETHE_CHECK(std::isfinite(s.weight), "term ", s.name(), ": weight must be finite");
  std::unique_ptr<Term> t;
  if (s.type == "nll") t = std::make_unique<NllTerm>(s);
  else if (s.type == "random_labels") {
    LETHE_CHECK(reference, "random_labels needs the model's vocabulary (pass the reference model)");
    t = std::make_unique<RandomLabelsTerm>(s, reference->config().vocab_size);
  } else if (s.type == "adversarial") t = std::make_unique<AdversarialTerm>(s, reference);
  else if (s.type == "kl") t = std::make_unique<KlTerm>(s, reference);
  else if (s.type == "npo" || s.type == "simnpo") {
    LETHE_CHECK(s.beta > 0, "term ", s.name(), ": beta must be positive, got ", s.beta);
    if (s.type == "npo") t = std::make_unique<NpoTerm>(s);
    else t = std::make_unique<SimNpoTerm>(s);
  } else if (s.type == "rmu_forget" || s.type == "rmu_retain") {
    LETHE_CHECK(reference, "term ", s.name(), " needs the original model");
    LETHE_CHECK(s.layer >= 0 && s.layer < reference->config().n_layers, "term ", s.name(), ": layer ", s.layer,
                " is outside [0, ", reference->config().n_layers, ")");
    t = std::make_unique<RmuTerm>(s, reference, reference->config().dim);
  } else {
    std::string known;
    for (const auto& k : term_types()) known += (known.empty() ? "" : ", ") + k;
    LETHE_FAIL("unknown term type '", s.type, "' (", known, ")");
  }
  LETHE_CHECK(!t->needs_reference() || reference, "term ", s.name(), " needs the original model");
  return t;
}

}  // namespace lethe
