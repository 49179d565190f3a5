#include "engine/eval/mia.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "engine/data/sequence_sampler.h"
#include "engine/model/parallel_terms.h"
#include "engine/parallel/vocab_parallel.h"
#include "kernels/cross_entropy.h"

namespace lethe {

namespace {

template <typename T>
void moments(const T* row, int64_t V, double& mu, double& sigma) {
  // One exp per entry, kept for the later passes: for a 128k vocabulary the exps, not the
  // sums, are the cost.
  thread_local std::vector<double> p;
  p.resize(size_t(V));
  double mx = -INFINITY;
  for (int64_t z = 0; z < V; ++z) mx = std::max(mx, double(row[z]));
  double se = 0;
  for (int64_t z = 0; z < V; ++z) se += p[size_t(z)] = std::exp(double(row[z]) - mx);
  const double lse = mx + std::log(se);
  double m = 0;
  for (int64_t z = 0; z < V; ++z) m += p[size_t(z)] / se * (double(row[z]) - lse);
  // Two passes rather than E[lp^2] - mu^2: the one-pass form cancels catastrophically
  // for peaked distributions, where mu^2 and E[lp^2] nearly agree.
  double var = 0;
  for (int64_t z = 0; z < V; ++z) {
    const double d = double(row[z]) - lse - m;
    var += p[size_t(z)] / se * d * d;
  }
  mu = m;
  sigma = std::sqrt(std::max(var, 0.0));
}

double value_at(const Tensor& t, int64_t i) {
  return t.dtype() == DType::f32 ? double(t.data<float>()[i]) : t.data<double>()[i];
}

double mean_of(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x);
  return s / double(v.size());
}

void check_scores(const std::vector<double>& v, const char* what) {
  LETHE_CHECK(!v.empty(), "MIA: no ", what, " scores (need at least one document on each side)");
  for (size_t i = 0; i < v.size(); ++i)
    LETHE_CHECK(!std::isnan(v[i]), "MIA: ", what, " score ", i, " is NaN");
}

}  // namespace

void logit_moments(const float* row, int64_t V, double& mu, double& sigma) { moments(row, V, mu, sigma); }
void logit_moments(const double* row, int64_t V, double& mu, double& sigma) { moments(row, V, mu, sigma); }

std::vector<DocTokenStats> collect_doc_stats(LlamaModel& model, const TokenDataset& ds, int64_t seq_len,
                                             int64_t batch, int64_t max_docs, int64_t* skipped,
                                             int64_t max_chunks_per_doc) {
  LETHE_CHECK(batch >= 1, "MIA: batch size must be >= 1, got ", batch);
  LETHE_CHECK(max_docs >= 0, "MIA: max_docs must be >= 0, got ", max_docs);
  SamplerConfig sc;
  sc.seq_len = seq_len;
  sc.shuffle = false;
  const SequenceSampler s(ds, sc);
  const int64_t docs_considered = max_docs > 0 ? std::min(max_docs, ds.n_docs()) : ds.n_docs();

  // Chunks come in document order, so the scored ones are a prefix.
  std::vector<int32_t> scratch_tok(static_cast<size_t>(seq_len)), scratch_tgt(static_cast<size_t>(seq_len));
  std::vector<int64_t> chunk_doc, chunk_index;
  int64_t in_doc = 0, prev_doc = -1;
  for (int64_t i = 0; i < s.n_sequences(); ++i) {
    int64_t d = -1;
    s.sequence(i, scratch_tok.data(), scratch_tgt.data(), &d);
    if (d >= docs_considered) break;
    in_doc = d == prev_doc ? in_doc + 1 : 0;
    prev_doc = d;
    if (max_chunks_per_doc > 0 && in_doc >= max_chunks_per_doc) continue;
    chunk_doc.push_back(d);
    chunk_index.push_back(i);
  }
  const int64_t n = int64_t(chunk_doc.size());
  // Under data parallelism dp rank d scores batches d, d + dp, ... (as evaluate_nll does):
  // the forward is collective over dp, so every rank runs the same number of them, one
  // fully masked sequence where its batches run out. Each scored token's (logp, mu, sigma)
  // goes to its own slot of a [n, seq_len, 3] buffer, zero elsewhere, and a sum over dp
  // (exact: one non-zero term per slot) gives every rank the one-process statistics.
  const int dp = model.grid().dp(), dp_rank = model.grid().dp_rank();
  const int64_t n_batches = (n + batch - 1) / batch, rounds = (n_batches + dp - 1) / dp;
  Tensor stats = Tensor::zeros({std::max<int64_t>(n, 1) * seq_len * 3}, DType::f32);
  float* st3 = stats.data<float>();
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t bi = round * dp + dp_rank, i0 = bi * batch;
    const bool real = bi < n_batches;
    const int64_t B = real ? std::min(batch, n - i0) : 1;
    Tensor tok = Tensor::zeros({B, seq_len}, DType::i32), tgt = Tensor::empty({B, seq_len}, DType::i32);
    if (real) {
      for (int64_t b = 0; b < B; ++b)
        s.sequence(chunk_index[size_t(i0 + b)], tok.data<int32_t>() + b * seq_len, tgt.data<int32_t>() + b * seq_len);
    } else {
      std::fill(tgt.data<int32_t>(), tgt.data<int32_t>() + tgt.numel(), ops::kIgnoreIndex);
    }
    // Weight 1 per token: the loss is a sum, defined on a rank whose batch is all masked.
    Tensor w = Tensor::empty({B, seq_len}, DType::f64);
    std::fill(w.data<double>(), w.data<double>() + w.numel(), 1.0);
    const int32_t* t = tgt.data<int32_t>();
    const int64_t N = B * seq_len;
    std::vector<double> mu(static_cast<size_t>(N)), sigma(static_cast<size_t>(N));
    // Min-K%++ moments from each chunk of logits as the loss path computes it (the whole
    // [N, V] logits are never held), where the chunk lives (a device's stays there). Under
    // tp each rank holds [R, V/tp] columns and the moments come from per-rank partial sums;
    // one rank's are logit_moments' arithmetic, bit for bit.
    auto visit = [&](int64_t r0, const Tensor& chunk) {
      const int64_t R = chunk.dim(0);
      Tensor tmu = Tensor::empty({R}, DType::f64), tsigma = Tensor::empty({R}, DType::f64);
      vocab_parallel_logprob_moments(chunk, tmu, tsigma, model.grid().tp_group());
      std::copy(tmu.data<double>(), tmu.data<double>() + R, mu.begin() + r0);
      std::copy(tsigma.data<double>(), tsigma.data<double>() + R, sigma.begin() + r0);
    };
    model.forward(tok, tgt, &w, visit);
    if (!real) continue;
    const Tensor logprobs = to_host(model.logprobs());
    for (int64_t k = 0; k < N; ++k) {
      if (t[k] == ops::kIgnoreIndex) continue;
      float* slot = st3 + (i0 * seq_len + k) * 3;
      slot[0] = float(value_at(logprobs, k));
      slot[1] = float(mu[size_t(k)]);
      slot[2] = float(sigma[size_t(k)]);
    }
  }
  if (dp > 1) model.grid().dp_group().all_reduce(stats, ReduceOp::sum);

  // Every rank knows which positions hold a target (the sampler, no model needed).
  std::vector<DocTokenStats> out;
  for (int64_t i = 0; i < n; ++i) {
    s.sequence(chunk_index[size_t(i)], scratch_tok.data(), scratch_tgt.data());
    const int64_t d = chunk_doc[size_t(i)];
    if (out.empty() || out.back().doc != d) {
      out.emplace_back();
      out.back().doc = d;
    }
    DocTokenStats& st = out.back();
    for (int64_t k = 0; k < seq_len; ++k) {
      if (scratch_tgt[size_t(k)] == ops::kIgnoreIndex) continue;
      const float* slot = st3 + (i * seq_len + k) * 3;
      st.logp.push_back(slot[0]);
      st.mu.push_back(slot[1]);
      st.sigma.push_back(slot[2]);
    }
  }
  if (skipped) *skipped = docs_considered - int64_t(out.size());
  return out;
}

std::string bytes_of_doc(const TokenDataset& ds, int64_t doc) {
  LETHE_CHECK(ds.tokenizer == "bytes", ds.path, ": tokenizer is \"", ds.tokenizer,
              "\", not \"bytes\": the ids are not the text; decode the documents with their tokenizer");
  LETHE_CHECK(doc >= 0 && doc < ds.n_docs(), ds.path, ": document ", doc, " out of range [0, ", ds.n_docs(), ")");
  int64_t a = ds.offsets[size_t(doc)], b = ds.offsets[size_t(doc) + 1];
  // bos/eos were added around the document by the tokenizer; they are not its text.
  if (ds.bos_id >= 0 && b > a && ds.tokens[size_t(a)] == ds.bos_id) ++a;
  if (ds.eos_id >= 0 && b > a && ds.tokens[size_t(b - 1)] == ds.eos_id) --b;
  std::string s;
  s.reserve(size_t(b - a));
  for (int64_t i = a; i < b; ++i) {
    const int32_t id = ds.tokens[size_t(i)];
    LETHE_CHECK(id >= 0 && id < 256, ds.path, ": document ", doc, " holds id ", id, ", not a byte");
    s.push_back(char(uint8_t(id)));
  }
  return s;
}

std::vector<std::string> bytes_of_docs(const TokenDataset& ds, const std::vector<DocTokenStats>& stats) {
  std::vector<std::string> out;
  out.reserve(stats.size());
  for (const DocTokenStats& st : stats) out.push_back(bytes_of_doc(ds, st.doc));
  return out;
}

int64_t zlib_size(const std::string& bytes) {
  uLongf len = compressBound(uLong(bytes.size()));
  std::vector<Bytef> buf(len);
  const int rc = compress2(buf.data(), &len, reinterpret_cast<const Bytef*>(bytes.data()), uLong(bytes.size()),
                           Z_DEFAULT_COMPRESSION);
  LETHE_CHECK(rc == Z_OK, "zlib compress2 failed with code ", rc);
  return int64_t(len);
}

double mean_lowest(std::vector<double> values, int k_percent) {
  LETHE_CHECK(!values.empty(), "MIA: mean of the lowest k% of no values");
  LETHE_CHECK(k_percent > 0 && k_percent <= 100, "MIA: k must be in (0, 100] percent, got ", k_percent);
  // Integer arithmetic: in floating point, floor(100 * 0.29) is 28. For kMiaKPercents this
  // agrees with the reference code's int(n * ratio).
  const int64_t n = int64_t(values.size());
  const int64_t m = std::max<int64_t>(1, n * k_percent / 100);
  // A full sort rather than nth_element, so the summation order, and the last bits of the
  // result, do not depend on the standard library.
  std::sort(values.begin(), values.end());
  double s = 0;
  for (int64_t i = 0; i < m; ++i) s += values[size_t(i)];
  return s / double(m);
}

MiaScores mia_scores(const std::vector<DocTokenStats>& stats, const std::vector<std::string>& doc_bytes,
                     const std::vector<DocTokenStats>* reference) {
  LETHE_CHECK(!stats.empty(), "MIA: no documents to score");
  LETHE_CHECK(doc_bytes.empty() || doc_bytes.size() == stats.size(), "MIA: ", stats.size(), " documents but ", doc_bytes.size(),
              " document texts");
  if (reference)
    LETHE_CHECK(reference->size() == stats.size(), "MIA: ", stats.size(), " documents but the reference model has ",
                reference->size());
  MiaScores r;
  auto& loss = r.by_attack["loss"];
  std::vector<double> zlib;
  for (size_t i = 0; i < stats.size(); ++i) {
    const DocTokenStats& st = stats[i];
    const size_t n = st.logp.size();
    LETHE_CHECK(n > 0, "MIA: document ", st.doc, " (entry ", i, ") has no predicted tokens");
    LETHE_CHECK(st.mu.size() == n && st.sigma.size() == n, "MIA: document ", st.doc, " has ", n, " logp but ",
                st.mu.size(), " mu and ", st.sigma.size(), " sigma values");
    const double ll = mean_of(st.logp);
    loss.push_back(ll);
    if (!doc_bytes.empty()) zlib.push_back(ll / double(zlib_size(doc_bytes[i])));
    std::vector<double> lp(n), z(n);
    for (size_t t = 0; t < n; ++t) {
      lp[t] = st.logp[t];
      z[t] = st.sigma[t] < kMiaSigmaEps ? 0.0 : (double(st.logp[t]) - double(st.mu[t])) / double(st.sigma[t]);
    }
    for (int k : kMiaKPercents) {
      r.by_attack["min_k_" + std::to_string(k)].push_back(mean_lowest(lp, k));
      r.by_attack["min_k_pp_" + std::to_string(k)].push_back(mean_lowest(z, k));
    }
    if (reference) {
      const DocTokenStats& ref = (*reference)[i];
      LETHE_CHECK(ref.doc == st.doc, "MIA: entry ", i, " is document ", st.doc, " but the reference's is document ",
                  ref.doc);
      LETHE_CHECK(!ref.logp.empty(), "MIA: document ", ref.doc, " has no predicted tokens under the reference model");
      r.by_attack["reference"].push_back(ll - mean_of(ref.logp));
    }
  }
  if (!doc_bytes.empty()) r.by_attack["zlib"] = std::move(zlib);
  return r;
}

double roc_auc(const std::vector<double>& member_scores, const std::vector<double>& nonmember_scores) {
  check_scores(member_scores, "member");
  check_scores(nonmember_scores, "nonmember");
  std::vector<double> neg = nonmember_scores;
  std::sort(neg.begin(), neg.end());
  // Twice U, so a tie's half counts as 1 and the sum stays an exact integer.
  int64_t u2 = 0;
  for (double s : member_scores) {
    const auto lo = std::lower_bound(neg.begin(), neg.end(), s);
    const auto hi = std::upper_bound(lo, neg.end(), s);
    u2 += 2 * int64_t(lo - neg.begin()) + int64_t(hi - lo);
  }
  return double(u2) / (2.0 * double(member_scores.size()) * double(neg.size()));
}

double tpr_at_fpr(const std::vector<double>& member_scores, const std::vector<double>& nonmember_scores, double fpr) {
  check_scores(member_scores, "member");
  check_scores(nonmember_scores, "nonmember");
  LETHE_CHECK(fpr >= 0 && fpr <= 1, "MIA: FPR must be in [0, 1], got ", fpr);
  const int64_t n2 = int64_t(nonmember_scores.size());
  // Largest number of false positives m with m / n2 <= fpr, compared as the user wrote it
  // (0.29 * 100 is 28.999..., yet 29 / 100 == 0.29 in double).
  int64_t m = std::clamp<int64_t>(int64_t(std::floor(fpr * double(n2))), 0, n2);
  while (m < n2 && double(m + 1) / double(n2) <= fpr) ++m;
  while (m > 0 && double(m) / double(n2) > fpr) --m;
  if (m == n2) return 1.0;
  std::vector<double> neg = nonmember_scores;
  std::nth_element(neg.begin(), neg.begin() + m, neg.end(), std::greater<double>());
  // The threshold must lie strictly above the (m+1)-th highest nonmember score.
  const double v = neg[size_t(m)];
  int64_t tp = 0;
  for (double s : member_scores) tp += s > v;
  return double(tp) / double(member_scores.size());
}

double priv_leak(double auc_unlearned, double auc_oracle) {
  LETHE_CHECK(auc_oracle > 0 && auc_oracle <= 1, "PrivLeak: oracle AUC must be in (0, 1], got ", auc_oracle);
  LETHE_CHECK(auc_unlearned >= 0 && auc_unlearned <= 1, "PrivLeak: unlearned AUC must be in [0, 1], got ",
              auc_unlearned);
  return (auc_unlearned - auc_oracle) / auc_oracle * 100.0;
}

MiaReport mia_report(const MiaScores& members, const MiaScores& nonmembers) {
  LETHE_CHECK(!members.by_attack.empty(), "MIA report: no member scores");
  LETHE_CHECK(!nonmembers.by_attack.empty(), "MIA report: no nonmember scores");
  MiaReport r;
  for (const auto& [name, _] : nonmembers.by_attack)
    LETHE_CHECK(members.by_attack.count(name), "MIA report: attack \"", name,
                "\" has nonmember scores but no member scores");
  for (const auto& [name, pos] : members.by_attack) {
    const auto it = nonmembers.by_attack.find(name);
    LETHE_CHECK(it != nonmembers.by_attack.end(), "MIA report: attack \"", name,
                "\" has member scores but no nonmember scores");
    r.auc[name] = roc_auc(pos, it->second);
    r.tpr_at_5_fpr[name] = tpr_at_fpr(pos, it->second, 0.05);
  }
  return r;
}

}  // namespace lethe
