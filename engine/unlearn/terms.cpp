#include "engine/unlearn/terms.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "engine/core/log.h"
#include "engine/core/rng.h"
#include "engine/model/parallel_terms.h"
#include "engine/parallel/vocab_parallel.h"
#include "engine/parallel/vocab_sample.h"
#include "kernels/cross_entropy.h"
#include "kernels/hidden_loss.h"

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

// Per-sequence sums of log p(target) over valid positions, from the last forward.
std::vector<double> sequence_logp(const LlamaModel& m, const Tensor& targets) {
  const int64_t B = targets.dim(0), T = targets.dim(1);
  std::vector<double> s(size_t(B), 0.0);
  const int32_t* t = targets.data<int32_t>();
  const Tensor lp = to_host(m.logprobs());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < T; ++k)
      if (t[b * T + k] != ops::kIgnoreIndex)
        s[size_t(b)] += lp.dtype() == DType::f32 ? double(lp.data<float>()[b * T + k]) : lp.data<double>()[b * T + k];
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

Tensor real_target_ones(const Tensor& targets) {
  Tensor ones = Tensor::zeros(targets.shape(), DType::f64);
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) ones.data<double>()[i] = t[i] != ops::kIgnoreIndex ? 1.0 : 0.0;
  return ones;
}

// The frozen original for terms that read it every step. make_term is handed either the
// caller's shared frozen copy or, from a caller that keeps none for this term, the model it
// trains; prepare() sees that model while it still holds the original weights, so a term
// handed the trained model copies it then (same grid, same shards).
class FrozenReference {
 public:
  explicit FrozenReference(LlamaModel* m) : ref_(m) {}
  void prepare(LlamaModel& original) {
    if (ref_ != &original) return;
    // Not owned: the grid belongs to the caller's model, which outlives its terms.
    std::shared_ptr<ProcessGrid> grid(&original.grid(), [](ProcessGrid*) {});
    // The copy computes as the original does (bf16 policy included), on its device.
    own_ = original.precision() == Precision::bf16
               ? std::make_unique<LlamaModel>(original.config(), Precision::bf16, grid, original.device())
               : std::make_unique<LlamaModel>(original.config(), original.dtype(), grid);
    for (size_t i = 0; i < original.params().size(); ++i) own_->params()[i].copy_from(original.params()[i]);
    ref_ = own_.get();
  }
  LlamaModel& get() const { return *ref_; }

 private:
  LlamaModel* ref_;
  std::unique_ptr<LlamaModel> own_;
};

// One forward's log p(target) per token, kept with what a backward with token weights
// chosen from those log-probs needs, so WGA and flood run one forward per step. The model's
// loss path computes them chunk by chunk (no [N, V] logits) on any grid.
class TokenLogprobs {
 public:
  TokenLogprobs(LlamaModel& m, const UnlearnBatch& b) : m_(m) {
    // Weight 0 everywhere: the forward's loss is not used, its log-probs are.
    const Tensor none = Tensor::zeros(b.targets.shape(), DType::f64);
    m.forward(b.tokens, b.targets, &none);
    logp_ = to_host(m.logprobs()).to(DType::f64);
  }
  double logp(int64_t i) const { return logp_.data<double>()[i]; }  // 0 at padding
  // Adds scale * d(-sum_i w_i log p_i)/dtheta into m.grads(); w [B, T] f64.
  void backward(const Tensor& w, double scale) { m_.backward(scale, &w); }

 private:
  LlamaModel& m_;
  Tensor logp_;
};

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

}  // namespace

// ---- random labels: every real target replaced by a random id ----------------------------
// From the reference (the seed study's default): drawn from the frozen original's
// next-token distribution at the same position (logits row t predicts target t), limited
// to its top_k most likely ids, then to the most likely of those up to the first whose
// cumulative probability (renormalised) exceeds top_p, as the seed code's sampler does.
// Uniform: any id of the vocabulary. Both use u ~ Philox(seed, step) at the element's place
// in the global batch, so every dp / tp layout draws the same labels.

Tensor draw_random_labels(const TermSpec& s, LlamaModel& ref, const UnlearnBatch& b) {
  Tensor t = b.targets.clone();
  const Philox rng(s.seed, uint64_t(b.step) + 0x7a6e0000ull);
  int32_t* p = t.data<int32_t>();
  // Indexed by the element's place in the global batch: every dp layout draws the same ids.
  const int64_t first = b.row0 * b.targets.dim(1);
  if (s.label_source == "uniform") {
    const uint64_t V = uint64_t(ref.config().vocab_size);
    for (int64_t i = 0; i < t.numel(); ++i)
      if (p[i] != ops::kIgnoreIndex) p[i] = int32_t(rng.below(uint64_t(first + i), V));
    return t;
  }
  // The reference's head in chunks; each chunk's draws stay where its logits live (the
  // device, each tp rank's columns), never the whole [N, V].
  const SampleFilter filter{s.top_k, s.top_p};
  ref.forward_trunk(b.tokens);
  ref.head_pass(
      [&](int64_t c0, const Tensor& chunk, Tensor*) {
        const int64_t C = chunk.dim(0);
        std::vector<double> u(static_cast<size_t>(C), -1.0);
        for (int64_t r = 0; r < C; ++r)
          if (p[c0 + r] != ops::kIgnoreIndex) u[size_t(r)] = rng.uniform(uint64_t(first + c0 + r));
        Tensor ids = Tensor::empty({C}, DType::i32);
        vocab_parallel_sample(chunk, u, filter, ref.vocab_shard(), ids, ref.grid().tp_group(),
                              "random_labels (label_source: reference)");
        for (int64_t r = 0; r < C; ++r)
          if (p[c0 + r] != ops::kIgnoreIndex) p[c0 + r] = ids.data<int32_t>()[r];
      },
      false);
  return t;
}

namespace {

class RandomLabelsTerm : public NllTerm {
 public:
  RandomLabelsTerm(TermSpec s, LlamaModel* ref) : NllTerm(std::move(s)), ref_(ref) {}
  bool needs_reference() const override { return spec_.label_source == "reference"; }
  void prepare(LlamaModel& original, const SequenceSampler&, int64_t) override {
    if (needs_reference()) ref_.prepare(original);
  }

 protected:
  Tensor targets(const UnlearnBatch& b) override { return draw_random_labels(spec_, ref_.get(), b); }
  FrozenReference ref_;
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
    // the vocabulary-parallel KL normalises over the global batch (one process: one rank).
    return kl_to_reference(m, *ref_, b.tokens, b.targets, scale, grad);
  }
  LlamaModel* ref_;
};

// ---- npo: -(2/beta) mean_s log sigmoid(-beta (logp_theta(y_s) - logp_ref(y_s)) / |y_s|) ----
// Per token: the log-ratio is averaged over the sequence's real targets (the NPO variant
// OpenUnlearning runs beside SimNPO), not summed as in Zhang et al. 2024. Summed, the term's
// gradient is |y| (128 at seq_len 128) times a mean-NLL term's, so a retain NLL term beside
// it is that much too weak and NPO behaves like GA. The paper's beta on sums equals a
// per-token beta of beta * |y| (0.1 at 128 tokens: 12.8), up to the overall 1/|y| scale.

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
    const Tensor ones = real_target_ones(b.targets);
    m.forward(b.tokens, b.targets, &ones);
    const auto lp = sequence_logp(m, b.targets);
    const auto len = sequence_lengths(b.targets);
    const int32_t* t = b.targets.data<int32_t>();
    double loss = 0;
    Tensor w = Tensor::zeros({B, T}, DType::f64);
    for (int64_t r = 0; r < B; ++r) {
      if (len[size_t(r)] == 0) continue;
      auto it = ref_logp_.find(b.seq_ids[size_t(r)]);
      LETHE_CHECK(it != ref_logp_.end(), "npo: sequence ", b.seq_ids[size_t(r)], " has no cached reference log-likelihood");
      const double n = double(len[size_t(r)]), beta = spec_.beta;
      const double d = (lp[size_t(r)] - it->second) / n;
      loss += -(2 / beta) * log_sigmoid(-beta * d) / Bg;
      // dL/dlogp(y_t) = 2 sigmoid(beta d) / (B n); as a cross-entropy weight (CE = -logp): the negative.
      const double g = 2 * sigmoid(beta * d) / (Bg * n);
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
// the length-normalised NLL; minimising it raises the forget NLL.) Already per token: its
// gradient is 2 (1 - sigmoid(x)) times a mean-NLL ascent's, so delta / beta must sit near
// the forget NLL per token (x near 0 at the start), or the term saturates and barely moves.

class SimNpoTerm : public Term {
 public:
  using Term::Term;
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    const int64_t B = b.tokens.dim(0), T = b.tokens.dim(1);
    const Tensor ones = real_target_ones(b.targets);
    const int32_t* t = b.targets.data<int32_t>();
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

// ---- wga: mean over real tokens of (1 - p(y_t)^alpha) / alpha -----------------------------
// Weighted gradient ascent (Wang et al. 2025, "Rethinking LLM unlearning objectives"): each
// token's ascent gradient weighted by p(y_t)^alpha, held constant, so tokens already
// unlikely stop being pushed. That gradient, p^alpha * grad(-log p), is exactly the gradient
// of (1 - p^alpha) / alpha (the generalised cross-entropy; -> NLL as alpha -> 0), which the
// term reports: with weight -1 it is WGA, and its value is a loss finite differences check.

class WgaTerm : public Term {
 public:
  using Term::Term;
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    TokenLogprobs lp(m, b);
    const int64_t n = count_valid_global(m, b.targets);
    if (n == 0) return 0;
    const double a = spec_.alpha;
    Tensor w = Tensor::zeros(b.targets.shape(), DType::f64);
    const int32_t* t = b.targets.data<int32_t>();
    double loss = 0;
    for (int64_t i = 0; i < b.targets.numel(); ++i) {
      if (t[i] == ops::kIgnoreIndex) continue;
      const double pa = std::exp(a * lp.logp(i));
      loss += -std::expm1(a * lp.logp(i)) / a / double(n);  // (1 - p^a) / a, exact for small a log p
      w.data<double>()[i] = pa / double(n);
    }
    if (grad && scale != 0) lp.backward(w, scale);
    return sum_over_dp(m, loss);
  }
};

// ---- flood: mean_s max(0, F - NLL_s / |y_s|) --------------------------------------------
// Flooding (Ishida et al. 2020) stops descent at a loss level; here it stops ascent: each
// forget sequence is pushed up (as GA pushes it) only while its NLL per token is below F,
// e.g. the NLL the original model has on unseen text of the domain, and left alone once it
// gets there, instead of GA's unbounded climb. One-sided on purpose: the two-sided
// |NLL_s - F| would pull a forget sequence that is harder than F down to F, i.e. teach it.
// Used with weight +1.

class FloodTerm : public Term {
 public:
  using Term::Term;
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    TokenLogprobs lp(m, b);
    const int64_t B = b.tokens.dim(0), T = b.tokens.dim(1);
    const auto len = sequence_lengths(b.targets);
    const double Bg = double(global_rows(b));
    const int32_t* t = b.targets.data<int32_t>();
    Tensor w = Tensor::zeros({B, T}, DType::f64);
    double loss = 0;
    for (int64_t r = 0; r < B; ++r) {
      if (len[size_t(r)] == 0) continue;
      const double n = double(len[size_t(r)]);
      double nll = 0;
      for (int64_t k = 0; k < T; ++k) nll -= lp.logp(r * T + k);  // 0 at padding
      nll /= n;
      if (nll >= spec_.flood) continue;  // reached the level: no loss, no push
      loss += (spec_.flood - nll) / Bg;
      // d(F - NLL_s) = -dNLL_s, and NLL_s is the CE with weight 1/n per token.
      const double g = -1.0 / (Bg * n);
      for (int64_t k = 0; k < T; ++k)
        if (t[r * T + k] != ops::kIgnoreIndex) w.data<double>()[r * T + k] = g;
    }
    if (grad && scale != 0) lp.backward(w, scale);
    return sum_over_dp(m, loss);
  }
};

// ---- undial: mean over real positions of KL(softmax(z_ref - gamma e_y) || p_theta) ------
// UNDIAL (Dong et al. 2024): self-distillation towards the frozen original's logits with
// the true next token's logit lowered by gamma. The target keeps the original's ranking of
// every other token, so the model is pulled off the memorised token by a bounded amount
// (p(y) falls by about e^-gamma) rather than pushed without limit as in GA. KL and the
// cross-entropy to the target differ by the target's entropy, a constant: same gradient.

class UndialTerm : public Term {
 public:
  UndialTerm(TermSpec s, LlamaModel* ref) : Term(std::move(s)), ref_(ref) {}
  bool needs_reference() const override { return true; }
  void prepare(LlamaModel& original, const SequenceSampler&, int64_t) override { ref_.prepare(original); }
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    const int64_t N = b.targets.numel();
    const int64_t valid = count_valid_global(m, b.targets);
    if (valid == 0) return 0;
    const int32_t* t = b.targets.data<int32_t>();
    Tensor rw = Tensor::zeros({N}, DType::f64);
    for (int64_t i = 0; i < N; ++i)
      if (t[i] != ops::kIgnoreIndex) rw.data<double>()[i] = 1.0 / double(valid);  // padding: no token to lower
    LlamaModel& ref = ref_.get();
    ref.forward_trunk(b.tokens);
    m.forward_trunk(b.tokens);
    const VocabShard vs = m.vocab_shard();
    // The target rows are the reference's rows in the model's dtype (as kl_to_reference
    // keeps them; its comment says why) with the true token's logit lowered where it lives
    // (ops::add_at_targets_: on a device, in the reference's own bf16 buffer, so the
    // lowered logit is rounded to bf16; the emulation rounds it there too).
    const Tensor tg = b.targets.reshape({N}).to(m.device());
    const bool round_bf16 = m.precision() == Precision::bf16 && m.device() == Device::cpu;
    ReferenceRows q(ref);
    const Tensor w = rw.to(m.device());
    Tensor kl = Tensor::zeros({1}, DType::f64, m.device());  // read once, after the last chunk
    m.head_pass(
        [&](int64_t r0, const Tensor& chunk, Tensor* dchunk) {
          const int64_t r1 = r0 + chunk.dim(0);
          Tensor target = q.rows_like(r0, r1, chunk);
          ops::add_at_targets_(target, tg.slice_rows(r0, r1), vs.start, -spec_.gamma);
          if (round_bf16 && target.dtype() == DType::f32) round_to_bf16_(target);
          vocab_parallel_kl(target, chunk, w.slice_rows(r0, r1), dchunk, m.grid().tp_group(), scale, kl);
        },
        grad && scale != 0);
    return sum_over_dp(m, to_host(kl).data<double>()[0]);
  }
  FrozenReference ref_;
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
    if (spec_.steering == "fixed") coef_ = spec_.steer;
  }
  bool needs_reference() const override { return spec_.type == "rmu_retain"; }
  // Adaptive RMU (Dang et al. 2025): c = beta * the mean L2 norm of the original's residual
  // stream at the layer over the forget set's real positions. RMU's 6.5 was chosen for
  // Zephyr-7B's layer-7 norms; a fixed c far below a model's own norm barely moves the
  // activations, one far above it swamps the retain term.
  void prepare(LlamaModel& original, const SequenceSampler& s, int64_t batch) override {
    if (spec_.type != "rmu_forget" || spec_.steering != "adaptive") return;
    const int64_t T = s.seq_len();
    double sum = 0;
    int64_t n = 0;
    for (int64_t i0 = 0; i0 < s.n_sequences(); i0 += batch) {
      const int64_t B = std::min(batch, s.n_sequences() - i0);
      Tensor tok = Tensor::empty({B, T}, DType::i32), tgt = Tensor::empty({B, T}, DType::i32);
      for (int64_t r = 0; r < B; ++r) s.sequence(i0 + r, tok.data<int32_t>() + r * T, tgt.data<int32_t>() + r * T);
      const Tensor h = to_host(original.forward_hidden(tok, spec_.layer)).to(DType::f64);
      const int64_t C = h.dim(1);
      for (int64_t i = 0; i < B * T; ++i) {
        if (tgt.data<int32_t>()[i] == ops::kIgnoreIndex) continue;
        double q = 0;
        for (int64_t c = 0; c < C; ++c) q += h.data<double>()[i * C + c] * h.data<double>()[i * C + c];
        sum += std::sqrt(q);
        ++n;
      }
    }
    LETHE_CHECK(n > 0, "term ", spec_.name(), ": the stream has no real positions to measure the activation norm on");
    coef_ = spec_.beta * sum / double(n);
    steer_ = Tensor();  // coef * u is formed again at the next step
    if (original.grid().rank() == 0)
      log::info("term ", spec_.name(), ": adaptive steering coefficient ", coef_, " = beta ", spec_.beta,
                " x mean activation norm ", sum / double(n), " at layer ", spec_.layer);
  }
  double value(LlamaModel& m, const UnlearnBatch& b) override { return run(m, b, 0, false); }
  double accumulate(LlamaModel& m, const UnlearnBatch& b, double scale) override { return run(m, b, scale, true); }

 private:
  // Mean squared error over real positions and channels, as torch's mse_loss in RMU
  // (ops::hidden_mse: where the hidden states live, so a device's stay there). The
  // gradient goes back through backward_hidden (bf16: rounded there, as the emulation
  // rounds).
  double run(LlamaModel& m, const UnlearnBatch& b, double scale, bool grad) {
    LETHE_CHECK(spec_.type == "rmu_retain" || !std::isnan(coef_), "term ", spec_.name(),
                ": adaptive steering needs prepare() on the forget stream before the first step");
    const Device dev = m.device();
    Tensor target, steer;
    if (spec_.type == "rmu_retain") {
      target = ref_->forward_hidden(b.tokens, spec_.layer);  // the reference's buffer, until its next forward
    } else {
      if (!steer_.defined() || steer_.device() != dev) {
        Tensor s = Tensor::empty({int64_t(u_.size())}, DType::f64);
        for (size_t c = 0; c < u_.size(); ++c) s.data<double>()[c] = coef_ * u_[c];
        steer_ = s.to(dev);
      }
      steer = steer_;
    }
    const Tensor& h = m.forward_hidden(b.tokens, spec_.layer);
    const int64_t N = h.dim(0), C = h.dim(1), n = count_valid_global(m, b.targets);
    if (n == 0) return 0;
    // A device's gradient is f32 (backward_hidden rounds it once); the CPU's is h's dtype.
    Tensor dh = Tensor::empty({N, C}, dev == Device::cpu ? h.dtype() : DType::f32, dev);
    Tensor loss = Tensor::zeros({1}, DType::f64, dev);
    ops::hidden_mse(h, target, steer, b.targets.reshape({N}).to(dev), scale, double(n * C), dh, loss);
    if (grad && scale != 0) m.backward_hidden(dh);
    return sum_over_dp(m, to_host(loss).data<double>()[0]) / double(n * C);
  }
  LlamaModel* ref_;
  Tensor steer_;  // coef * u, on the model's device once known
  std::vector<double> u_;
  double coef_ = std::numeric_limits<double>::quiet_NaN();  // c: steer, or set by prepare()
};

}  // namespace

std::string TermSpec::name() const { return type + "@" + stream; }

const std::vector<std::string>& term_types() {
  static const std::vector<std::string> t{"nll",    "random_labels", "adversarial", "kl",    "npo",  "simnpo",
                                          "wga",    "flood",         "undial",      "rmu_forget", "rmu_retain"};
  return t;
}

bool term_reads_reference(const TermSpec& s) {
  return s.type == "kl" || s.type == "adversarial" || s.type == "rmu_retain" || s.type == "undial" ||
         (s.type == "random_labels" && s.label_source == "reference");
}

void validate_term_spec(const TermSpec& s, const std::function<std::string(const std::string&)>& where) {
  bool known = false;
  for (const auto& k : term_types()) known |= k == s.type;
  if (!known) {
    std::string list;
    for (const auto& k : term_types()) list += (list.empty() ? "" : ", ") + k;
    LETHE_FAIL(where("type"), ": unknown term type '", s.type, "' (", list, ")");
  }
  LETHE_CHECK(s.stream == "forget" || s.stream == "retain" || s.stream == "general", where("stream"),
              ": must be forget, retain or general, got '", s.stream, "'");
  LETHE_CHECK(std::isfinite(s.weight), where("weight"), ": must be finite");
  const bool rmu = s.type == "rmu_forget" || s.type == "rmu_retain";
  if (s.type == "npo" || s.type == "simnpo" || (s.type == "rmu_forget" && s.steering == "adaptive"))
    LETHE_CHECK(s.beta > 0 && std::isfinite(s.beta), where("beta"), ": must be positive, got ", s.beta);
  if (s.type == "simnpo") LETHE_CHECK(std::isfinite(s.delta), where("delta"), ": must be finite");
  if (rmu) LETHE_CHECK(s.layer >= 0, where("layer"), ": must be set to a layer index >= 0, got ", s.layer);
  if (s.type == "rmu_forget") {
    LETHE_CHECK(s.steering == "fixed" || s.steering == "adaptive", where("steering"),
                ": must be fixed or adaptive, got '", s.steering, "'");
    LETHE_CHECK(std::isfinite(s.steer), where("steer"), ": must be finite");
  }
  if (s.type == "random_labels") {
    LETHE_CHECK(s.label_source == "reference" || s.label_source == "uniform", where("label_source"),
                ": must be reference or uniform, got '", s.label_source, "'");
    LETHE_CHECK(s.top_k >= 0, where("top_k"), ": must be >= 0 (0 = the whole vocabulary), got ", s.top_k);
    LETHE_CHECK(s.top_p > 0 && s.top_p <= 1, where("top_p"), ": must be in (0, 1], got ", s.top_p);
  }
  if (s.type == "wga") LETHE_CHECK(s.alpha > 0 && std::isfinite(s.alpha), where("alpha"), ": must be positive, got ", s.alpha);
  if (s.type == "undial")
    LETHE_CHECK(s.gamma > 0 && std::isfinite(s.gamma), where("gamma"), ": must be positive, got ", s.gamma);
  if (s.type == "flood")
    LETHE_CHECK(s.flood > 0 && std::isfinite(s.flood), where("flood"),
                ": must be set to the target NLL per token (nats, > 0), got ", s.flood);
}

std::unique_ptr<Term> make_term(const TermSpec& s, LlamaModel* reference) {
  validate_term_spec(s, [&](const std::string& key) { return "term " + s.name() + ": " + key; });
  std::unique_ptr<Term> t;
  if (s.type == "nll") t = std::make_unique<NllTerm>(s);
  else if (s.type == "random_labels") {
    LETHE_CHECK(reference, "random_labels needs the model's vocabulary (pass the reference model)");
    LETHE_CHECK(s.top_k <= reference->config().vocab_size, "term ", s.name(), ": top_k ", s.top_k,
                " exceeds the vocabulary (", reference->config().vocab_size, ")");
    t = std::make_unique<RandomLabelsTerm>(s, reference);
  } else if (s.type == "adversarial") t = std::make_unique<AdversarialTerm>(s, reference);
  else if (s.type == "kl") t = std::make_unique<KlTerm>(s, reference);
  else if (s.type == "npo") t = std::make_unique<NpoTerm>(s);
  else if (s.type == "simnpo") t = std::make_unique<SimNpoTerm>(s);
  else if (s.type == "wga") t = std::make_unique<WgaTerm>(s);
  else if (s.type == "flood") t = std::make_unique<FloodTerm>(s);
  else if (s.type == "undial") t = std::make_unique<UndialTerm>(s, reference);
  else {  // rmu_forget, rmu_retain
    LETHE_CHECK(reference, "term ", s.name(), " needs the original model");
    LETHE_CHECK(s.layer < reference->config().n_layers, "term ", s.name(), ": layer ", s.layer,
                " is outside [0, ", reference->config().n_layers, ")");
    t = std::make_unique<RmuTerm>(s, reference, reference->config().dim);
  }
  LETHE_CHECK(!t->needs_reference() || reference, "term ", s.name(), " needs the original model");
  return t;
}

}  // namespace lethe
