#include "engine/eval/exposure.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "kernels/cross_entropy.h"

namespace lethe {
namespace {

using nlohmann::json;

// Candidates scoring within this of the secret are ties and count half, so a model that
// cannot tell candidates apart (all equal) ranks the secret in the middle, not first.
// Distinct candidates of a real model differ by far more.
constexpr double kTie = 1e-9;

Canary parse_canary(const std::string& text, const std::string& path, int64_t line) {
  const auto where = [&] { return path + ":" + std::to_string(line); };
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    LETHE_FAIL(where(), ": not valid JSON (", e.what(), ")");
  }
  LETHE_CHECK(j.is_object(), where(), ": expected a JSON object with prefix, secret, alphabet");
  Canary c;
  c.line = line;
  for (const auto& [key, field] : {std::pair{"prefix", &c.prefix}, std::pair{"secret", &c.secret},
                                   std::pair{"alphabet", &c.alphabet}}) {
    LETHE_CHECK(j.contains(key), where(), ": missing \"", key, "\"");
    LETHE_CHECK(j[key].is_string(), where(), ": \"", key, "\" must be a string");
    *field = j[key].get<std::string>();
    LETHE_CHECK(!field->empty(), where(), ": \"", key, "\" is empty");
  }
  std::set<char> seen;
  for (const char a : c.alphabet) {
    LETHE_CHECK(static_cast<unsigned char>(a) < 0x80, where(), ": the alphabet must be ASCII (one byte per character)");
    LETHE_CHECK(seen.insert(a).second, where(), ": the alphabet repeats '", a, "'");
  }
  LETHE_CHECK(c.alphabet.size() >= 2, where(), ": the alphabet needs at least two characters");
  for (const char s : c.secret)
    LETHE_CHECK(seen.count(s), where(), ": the secret has a character outside the alphabet");  // not echoed: it is the secret
  return c;
}

double as_double(const Tensor& t, int64_t i) {
  return t.dtype() == DType::f32 ? double(t.data<float>()[i]) : t.data<double>()[i];
}

// Summed log-likelihood of each row's last `n_target` tokens. Rows of one call have one
// length, so no padding is needed.
std::vector<double> score_rows(LlamaModel& model, const std::vector<std::vector<int32_t>>& rows, int64_t n_target) {
  const int64_t B = int64_t(rows.size()), T = int64_t(rows[0].size()) - 1;
  Tensor tok = Tensor::empty({B, T}, DType::i32), tgt = Tensor::empty({B, T}, DType::i32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      tok.data<int32_t>()[b * T + t] = rows[size_t(b)][size_t(t)];
      tgt.data<int32_t>()[b * T + t] = t >= T - n_target ? rows[size_t(b)][size_t(t + 1)] : ops::kIgnoreIndex;
    }
  model.forward(tok, tgt);
  const Tensor lp = to_host(model.logprobs());
  std::vector<double> out(static_cast<size_t>(B), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = T - n_target; t < T; ++t) out[size_t(b)] += as_double(lp, b * T + t);
  return out;
}

// score_rows in batches of up to 256 rows.
std::vector<double> score_all(LlamaModel& model, const std::vector<std::vector<int32_t>>& rows, int64_t n_target) {
  std::vector<double> out;
  for (size_t b = 0; b < rows.size(); b += 256) {
    const std::vector<std::vector<int32_t>> part(rows.begin() + long(b), rows.begin() + long(std::min(rows.size(), b + 256)));
    const std::vector<double> s = score_rows(model, part, n_target);
    out.insert(out.end(), s.begin(), s.end());
  }
  return out;
}

}  // namespace

std::vector<Canary> load_canaries(const std::string& jsonl_path) {
  std::ifstream in(jsonl_path, std::ios::binary);
  LETHE_CHECK(in, "canary file ", jsonl_path, ": cannot open");
  std::vector<Canary> out;
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    out.push_back(parse_canary(text, jsonl_path, line));
  }
  LETHE_CHECK(!out.empty(), "canary file ", jsonl_path, ": no canaries");
  return out;
}

ExposureResult canary_exposure(LlamaModel& model, const Canary& c, const TextEncoder& encode, uint64_t seed,
                               int64_t max_rows, int64_t samples) {
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

  // A candidate is a vector of alphabet indices; its row is the prefix and the candidate.
  using Cand = std::vector<int32_t>;
  auto row_of = [&](const Cand& cand) {
    std::vector<int32_t> row = ctx;
    for (const int32_t a : cand) row.push_back(token_of[size_t(a)]);
    return row;
  };
  Cand secret;
  for (const char ch : c.secret) {
    const int64_t a = index_of(ch);
    LETHE_CHECK(a >= 0, "canary (line ", c.line, "): the secret has a character outside the alphabet");
    secret.push_back(int32_t(a));
  }

  // Breadth-first: level k holds every k-character start whose log-likelihood is at least
  // the secret's; the secret's own start is always among them. Its log-likelihood is summed
  // along the walk, as every candidate's is, so comparisons see one rounding. The prune
  // keeps a margin of 1e-3 nats against the whole-secret score computed beforehand, whose
  // f32 rounding differs from the walk's by far less.
  const double lp_secret_row = score_rows(model, {row_of(secret)}, L)[0];
  struct Node {
    Cand cand;
    double lp;
  };
  std::vector<Node> level{{Cand{}, 0.0}};
  int64_t rows_used = 1;
  bool exhausted = false;
  for (int64_t k = 0; k < L && !exhausted; ++k) {
    if (rows_used + int64_t(level.size()) * A > max_rows) {
      exhausted = true;
      break;
    }
    std::vector<std::vector<int32_t>> rows;
    for (const Node& n : level)
      for (int32_t a = 0; a < A; ++a) {
        Cand next = n.cand;
        next.push_back(a);
        rows.push_back(row_of(next));
      }
    rows_used += int64_t(rows.size());
    const std::vector<double> step = score_all(model, rows, 1);
    std::vector<Node> next_level;
    for (size_t i = 0; i < level.size(); ++i)
      for (int32_t a = 0; a < A; ++a) {
        const double lp = level[i].lp + step[i * size_t(A) + size_t(a)];
        if (lp < lp_secret_row - 1e-3) continue;
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
  std::vector<std::vector<int32_t>> rows;
  for (int64_t s = 0; s < samples; ++s) {
    Cand cand(static_cast<size_t>(L));
    for (auto& a : cand) a = pick(rng);
    rows.push_back(row_of(cand));
  }
  const std::vector<double> lp = score_all(model, rows, L);
  double above = 0;
  for (const double x : lp) above += x > lp_secret_row + kTie ? 1.0 : x >= lp_secret_row - kTie ? 0.5 : 0.0;
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
