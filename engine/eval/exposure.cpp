#include "engine/eval/exposure.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <memory>
#include <set>

#include "engine/io/jsonl.h"
#include "kernels/cross_entropy.h"

namespace lethe {
namespace {

using nlohmann::json;

// Candidates scoring within this of the secret are ties and count half, so a model that
// cannot tell candidates apart (all equal) ranks the secret in the middle, not first.
// Distinct candidates of a real model differ by far more.
constexpr double kTie = 1e-9;

Canary parse_canary(const json& j, const std::string& where, int64_t line) {
  Canary c;
  c.line = line;
  for (const auto& [key, field] : {std::pair{"prefix", &c.prefix}, std::pair{"secret", &c.secret},
                                   std::pair{"alphabet", &c.alphabet}}) {
    LETHE_CHECK(j.contains(key), where, ": missing \"", key, "\"");
    LETHE_CHECK(j[key].is_string(), where, ": \"", key, "\" must be a string");
    *field = j[key].get<std::string>();
    LETHE_CHECK(!field->empty(), where, ": \"", key, "\" is empty");
  }
  std::set<char> seen;
  for (const char a : c.alphabet) {
    LETHE_CHECK(static_cast<unsigned char>(a) < 0x80, where, ": the alphabet must be ASCII (one byte per character)");
    LETHE_CHECK(seen.insert(a).second, where, ": the alphabet repeats '", a, "'");
  }
  LETHE_CHECK(c.alphabet.size() >= 2, where, ": the alphabet needs at least two characters");
  for (const char s : c.secret)
    LETHE_CHECK(seen.count(s), where, ": the secret has a character outside the alphabet");  // not echoed: it is the secret
  return c;
}

double as_double(const Tensor& t, int64_t i) {
  return t.dtype() == DType::f32 ? double(t.data<float>()[i]) : t.data<double>()[i];
}

using Cand = std::vector<int32_t>;  // alphabet indices

// Log-probabilities under the model of candidates after the canary's prefix: of each
// alphabet character after each start (a partial candidate), and of whole candidates.
class Scorer {
 public:
  virtual ~Scorer() = default;
  // [starts.size() * A]: log p(a | prefix + start), starts all of one length.
  virtual std::vector<double> next(const std::vector<Cand>& starts) = 0;
  // Summed log p of each whole candidate.
  virtual std::vector<double> whole(const std::vector<Cand>& cands) = 0;
};

// One forward per row over the prefix and the candidate, reading the target log-probs: A
// rows per start. Works on any process grid (the head is vocabulary-parallel under tp).
class RowScorer final : public Scorer {
 public:
  RowScorer(LlamaModel& m, const std::vector<int32_t>& ctx, const std::vector<int32_t>& token_of)
      : m_(m), ctx_(ctx), token_of_(token_of) {}
  std::vector<double> next(const std::vector<Cand>& starts) override {
    std::vector<std::vector<int32_t>> rows;
    for (const Cand& s : starts)
      for (size_t a = 0; a < token_of_.size(); ++a) {
        rows.push_back(row_of(s));
        rows.back().push_back(token_of_[a]);
      }
    return score(rows, 1);
  }
  std::vector<double> whole(const std::vector<Cand>& cands) override {
    std::vector<std::vector<int32_t>> rows;
    for (const Cand& c : cands) rows.push_back(row_of(c));
    return score(rows, int64_t(cands[0].size()));
  }

 private:
  std::vector<int32_t> row_of(const Cand& c) const {
    std::vector<int32_t> row = ctx_;
    for (const int32_t a : c) row.push_back(token_of_[size_t(a)]);
    return row;
  }
  // Rows of one length, in batches of 256: no padding.
  std::vector<double> score(const std::vector<std::vector<int32_t>>& rows, int64_t n_target) {
    std::vector<double> out;
    for (size_t b0 = 0; b0 < rows.size(); b0 += 256) {
      const int64_t B = int64_t(std::min<size_t>(256, rows.size() - b0)), T = int64_t(rows[0].size()) - 1;
      Tensor tok = Tensor::empty({B, T}, DType::i32), tgt = Tensor::empty({B, T}, DType::i32);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) {
          tok.data<int32_t>()[b * T + t] = rows[b0 + size_t(b)][size_t(t)];
          tgt.data<int32_t>()[b * T + t] = t >= T - n_target ? rows[b0 + size_t(b)][size_t(t + 1)] : ops::kIgnoreIndex;
        }
      m_.forward(tok, tgt);
      const Tensor lp = to_host(m_.logprobs());
      for (int64_t b = 0; b < B; ++b) {
        double s = 0;
        for (int64_t t = T - n_target; t < T; ++t) s += as_double(lp, b * T + t);
        out.push_back(s);
      }
    }
    return out;
  }
  LlamaModel& m_;
  const std::vector<int32_t>& ctx_;
  const std::vector<int32_t>& token_of_;
};

// The prefix prefilled once into the key/value cache, forked into one copy per candidate,
// then one position per candidate character: about |prefix| / |secret| times less work than
// RowScorer. One process per tensor-parallel group only (it reads whole logits rows).
class DecodeScorer final : public Scorer {
 public:
  DecodeScorer(LlamaModel& m, const std::vector<int32_t>& ctx, const std::vector<int32_t>& token_of)
      : m_(m), ctx_(ctx), token_of_(token_of) {
    // Copies of the cache per batch: at most 256 MiB of them, and at least one.
    batch_ = std::clamp<int64_t>((int64_t(256) << 20) / std::max<int64_t>(1, m.decode_cache_bytes_per_sequence()), 1, 256);
    logits1_ = Tensor::empty({1, V()}, m.storage_dtype(), m.device());
  }
  std::vector<double> next(const std::vector<Cand>& starts) override {
    std::vector<double> out;
    run(starts, int64_t(starts[0].size()), [&](size_t, const Tensor& lsm, int64_t row) {
      for (size_t a = 0; a < token_of_.size(); ++a) out.push_back(lsm.data<double>()[row * V() + token_of_[a]]);
    });
    return out;
  }
  std::vector<double> whole(const std::vector<Cand>& cands) override {
    // Every position's log-softmax is read: the prefill's for the first character, then
    // one per step.
    const int64_t L = int64_t(cands[0].size());
    std::vector<double> out(cands.size(), 0.0);
    for (size_t b0 = 0; b0 < cands.size(); b0 += size_t(batch_)) {
      const int64_t B = std::min<int64_t>(batch_, int64_t(cands.size() - b0));
      Tensor lsm = prefill();
      for (int64_t b = 0; b < B; ++b) out[b0 + size_t(b)] += lsm.data<double>()[token_of_[size_t(cands[b0 + size_t(b)][0])]];
      m_.decode_fork(B);
      for (int64_t k = 1; k < L; ++k) {
        lsm = step(cands, b0, B, k - 1);
        for (int64_t b = 0; b < B; ++b)
          out[b0 + size_t(b)] += lsm.data<double>()[b * V() + token_of_[size_t(cands[b0 + size_t(b)][size_t(k)])]];
      }
    }
    return out;
  }

 private:
  int64_t V() const { return m_.config().vocab_size; }
  // Row-wise log-softmax of host logits [B, V], in double.
  Tensor log_softmax(const Tensor& logits_dev) const {
    const Tensor lg = to_host(logits_dev);
    const int64_t B = lg.dim(0), n = V();
    Tensor out = Tensor::empty({B, n}, DType::f64);
    for (int64_t b = 0; b < B; ++b) {
      double mx = -INFINITY, sum = 0;
      for (int64_t v = 0; v < n; ++v) mx = std::max(mx, as_double(lg, b * n + v));
      for (int64_t v = 0; v < n; ++v) sum += std::exp(as_double(lg, b * n + v) - mx);
      const double lse = mx + std::log(sum);
      for (int64_t v = 0; v < n; ++v) out.data<double>()[b * n + v] = as_double(lg, b * n + v) - lse;
    }
    return out;
  }
  Tensor prefill() {
    Tensor tok = Tensor::empty({1, int64_t(ctx_.size())}, DType::i32);
    std::copy(ctx_.begin(), ctx_.end(), tok.data<int32_t>());
    m_.decode_prefill(tok, logits1_);
    return log_softmax(logits1_);
  }
  Tensor step(const std::vector<Cand>& cands, size_t b0, int64_t B, int64_t k) {
    Tensor next = Tensor::empty({B}, DType::i32);
    for (int64_t b = 0; b < B; ++b) next.data<int32_t>()[b] = token_of_[size_t(cands[b0 + size_t(b)][size_t(k)])];
    if (!logitsB_.defined() || logitsB_.dim(0) != B) logitsB_ = Tensor::empty({B, V()}, m_.storage_dtype(), m_.device());
    m_.decode_step(next, logitsB_);
    return log_softmax(logitsB_);
  }
  // Feeds each start's characters and hands fn the log-softmax after them.
  template <class Fn>
  void run(const std::vector<Cand>& starts, int64_t k, const Fn& fn) {
    for (size_t b0 = 0; b0 < starts.size(); b0 += size_t(batch_)) {
      const int64_t B = std::min<int64_t>(batch_, int64_t(starts.size() - b0));
      Tensor lsm = prefill();
      if (k == 0) {
        for (int64_t b = 0; b < B; ++b) fn(b0 + size_t(b), lsm, 0);
        continue;
      }
      m_.decode_fork(B);
      for (int64_t j = 0; j < k; ++j) lsm = step(starts, b0, B, j);
      for (int64_t b = 0; b < B; ++b) fn(b0 + size_t(b), lsm, b);
    }
  }
  LlamaModel& m_;
  const std::vector<int32_t>& ctx_;
  const std::vector<int32_t>& token_of_;
  int64_t batch_ = 1;
  Tensor logits1_, logitsB_;
};

}  // namespace

std::vector<Canary> load_canaries(const std::string& jsonl_path) {
  std::vector<Canary> out;
  for_each_jsonl_object(jsonl_path, "canary file", "canaries", "prefix, secret, alphabet",
                        [&](const json& j, const std::string& where, int64_t line) {
                          out.push_back(parse_canary(j, where, line));
                        });
  return out;
}

ExposureResult canary_exposure(LlamaModel& model, const Canary& c, const TextEncoder& encode, uint64_t seed,
                               int64_t max_rows, int64_t samples, bool rows) {
  const std::vector<int32_t> ctx = encode(c.prefix);
  const int64_t L = int64_t(c.secret.size()), A = int64_t(c.alphabet.size());
  LETHE_CHECK(!ctx.empty(), "canary (line ", c.line, "): the prefix encodes to no tokens");
  LETHE_CHECK(int64_t(ctx.size()) + L <= model.config().max_seq_len + 1, "canary (line ", c.line, "): prefix and secret are ",
              int64_t(ctx.size()) + L, " tokens, more than the model's max_seq_len ", model.config().max_seq_len,
              " + 1");
  std::vector<int32_t> token_of(static_cast<size_t>(A));
  for (int64_t a = 0; a < A; ++a) {
    const std::vector<int32_t> one = encode(std::string(1, c.alphabet[size_t(a)]));
    LETHE_CHECK(one.size() == 1, "canary (line ", c.line, "): alphabet character '", c.alphabet[size_t(a)],
                "' is not one token: exposure needs a byte-level model in this version");
    LETHE_CHECK(one[0] >= 0 && one[0] < model.config().vocab_size, "canary (line ", c.line, "): token ", one[0],
                " is outside the vocabulary");
    token_of[size_t(a)] = one[0];
  }
  auto index_of = [&](char ch) { return int64_t(c.alphabet.find(ch)); };
  ExposureResult r;
  r.log2_space = double(L) * std::log2(double(A));
  Cand secret;
  for (const char ch : c.secret) {
    const int64_t a = index_of(ch);
    LETHE_CHECK(a >= 0, "canary (line ", c.line, "): the secret has a character outside the alphabet");
    secret.push_back(int32_t(a));
  }
  std::unique_ptr<Scorer> scorer;
  if (model.grid().tp() == 1 && !rows) scorer = std::make_unique<DecodeScorer>(model, ctx, token_of);
  else scorer = std::make_unique<RowScorer>(model, ctx, token_of);

  // Breadth-first: level k holds every k-character start whose log-likelihood is at least
  // the secret's; the secret's own start is always among them. Its log-likelihood is summed
  // along the walk, as every candidate's is, so the final comparisons see one arithmetic.
  // The prune keeps a margin of 1e-3 nats against the whole-secret score computed
  // beforehand, whose rounding (other batch shapes) differs from the walk's by far less.
  const double lp_secret = scorer->whole({secret})[0];
  struct Node {
    Cand cand;
    double lp;
  };
  std::vector<Node> level{{Cand{}, 0.0}};
  int64_t rows_used = 1;
  bool exhausted = false;
  for (int64_t k = 0; k < L; ++k) {
    if (rows_used + int64_t(level.size()) * A > max_rows) {
      exhausted = true;
      break;
    }
    std::vector<Cand> starts;
    for (const Node& n : level) starts.push_back(n.cand);
    rows_used += int64_t(starts.size()) * A;
    const std::vector<double> step = scorer->next(starts);
    std::vector<Node> next_level;
    for (size_t i = 0; i < level.size(); ++i)
      for (int32_t a = 0; a < A; ++a) {
        const double lp = level[i].lp + step[i * size_t(A) + size_t(a)];
        if (lp < lp_secret - 1e-3) continue;
        Cand next = level[i].cand;
        next.push_back(a);
        next_level.push_back({std::move(next), lp});
      }
    level = std::move(next_level);
  }
  if (!exhausted) {
    const auto self = std::find_if(level.begin(), level.end(), [&](const Node& n) { return n.cand == secret; });
    LETHE_CHECK(self != level.end(), "canary (line ", c.line, "): the secret fell out of its own walk (",
                "the model's scores disagree by more than 1e-3 nats between batchings)");
    double above = 0;
    for (const Node& n : level)
      if (n.cand != secret) above += n.lp > self->lp + kTie ? 1.0 : n.lp >= self->lp - kTie ? 0.5 : 0.0;
    r.rank = 1.0 + above;
    r.exposure = r.log2_space - std::log2(r.rank);
    return r;
  }

  // Too many candidates come close: estimate the share above the secret from samples.
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(A - 1));
  std::vector<Cand> cands;
  for (int64_t s = 0; s < samples; ++s) {
    Cand cand(static_cast<size_t>(L));
    for (auto& a : cand) a = pick(rng);
    cands.push_back(std::move(cand));
  }
  const std::vector<double> lp = scorer->whole(cands);
  double above = 0;
  for (const double x : lp) above += x > lp_secret + kTie ? 1.0 : x >= lp_secret - kTie ? 0.5 : 0.0;
  const double space = std::pow(double(A), double(L));
  r.exact = false;
  r.rank = 1.0 + (space - 1.0) * (above + 0.5) / double(samples + 1);
  r.exposure = r.log2_space - std::log2(r.rank);
  return r;
}

ExposureSetResult canary_set_exposure(LlamaModel& model, const std::string& jsonl_path, const TextEncoder& encode,
                                      uint64_t seed) {
  LETHE_CHECK(bool(encode), "canary exposure: no encode function");
  const std::vector<Canary> canaries = load_canaries(jsonl_path);
  ExposureSetResult out;
  for (size_t i = 0; i < canaries.size(); ++i) {
    ExposureResult e;
    try {
      e = canary_exposure(model, canaries[i], encode, seed + i);
    } catch (const Error& err) {
      LETHE_FAIL(jsonl_path, ": ", err.what());
    }
    out.exposures.push_back(e.exposure);
    out.mean += e.exposure;
    out.log2_space_max = std::max(out.log2_space_max, e.log2_space);
    out.exact += e.exact;
  }
  out.mean /= double(canaries.size());
  return out;
}

}  // namespace lethe
