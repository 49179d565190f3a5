// Membership-inference (MIA) scores for unlearning evaluation, as the unlearning literature
// runs them (MUSE; Min-K% Prob, Shi et al. 2023; Min-K%++, Zhang et al. 2024; the zlib
// ratio, Carlini et al. 2021; a reference model's loss difference), and the metrics over
// them: ROC AUC, TPR at a fixed FPR, and MUSE's PrivLeak.
//
// Every score is oriented so that HIGHER means "more likely a member" (seen in training):
// an AUC above 0.5 means members are detectable. Over a document's n predicted tokens,
// with logp_t = log p(x_t | x_<t):
//   loss          mean_t logp_t                            (the negative mean NLL)
//   zlib          mean_t logp_t / zlib_size(text bytes)    (MUSE's and the Min-K%++ code's
//                 "zlib": log-likelihood over the length of Python's zlib.compress(text))
//   min_k_K       mean of the m lowest logp_t, m = max(1, floor(n * K / 100))
//   min_k_pp_K    the same over z_t = (logp_t - mu_t) / sigma_t, with mu_t, sigma_t the
//                 mean and standard deviation of log p(z) under z ~ p(. | x_<t); z_t = 0
//                 where sigma_t < 1e-12 (a one-point or uniform distribution: the token is
//                 exactly as likely as expected, no evidence either way)
//   reference     mean_t logp_t(target model) - mean_t logp_t(reference model)
// for K in kMiaKPercents.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/data/token_dataset.h"
#include "engine/model/llama.h"

namespace lethe {

inline constexpr std::array<int, 7> kMiaKPercents{10, 20, 30, 40, 50, 60, 100};
inline constexpr double kMiaSigmaEps = 1e-12;

// One document's predicted tokens, in document order (chunks concatenated).
struct DocTokenStats {
  std::vector<float> logp;   // log p(x_t | x_<t)
  std::vector<float> mu;     // sum_z p(z) log p(z)
  std::vector<float> sigma;  // sqrt(sum_z p(z) (log p(z) - mu)^2)
  int64_t doc = -1;          // index of the document in the dataset
};

// Runs the model over the seed-study chunks of every document (SequenceSampler, no
// shuffle; each chunk restarts the context) and gathers per-token statistics per document.
// A document with fewer than 2 tokens has nothing to predict: it gets no entry, the
// entries' `doc` fields say which documents are present, and `skipped` (when given)
// receives how many were left out. max_docs > 0 restricts scoring to documents
// [0, max_docs). max_chunks_per_doc > 0 scores only each document's first that many
// chunks (MIA benchmarks score fixed-length snippets; whole books cost too much).
std::vector<DocTokenStats> collect_doc_stats(LlamaModel& model, const TokenDataset& ds, int64_t seq_len,
                                             int64_t batch, int64_t max_docs = 0, int64_t* skipped = nullptr,
                                             int64_t max_chunks_per_doc = 0);

// The text bytes of document `doc` of a byte-level dataset (tokenizer "bytes"): the ids
// are the bytes, without a leading bos_id or trailing eos_id. Any other tokenizer is an
// error: decode the text with its tokenizer instead.
std::string bytes_of_doc(const TokenDataset& ds, int64_t doc);
// bytes_of_doc for each entry of `stats`, aligned with it.
std::vector<std::string> bytes_of_docs(const TokenDataset& ds, const std::vector<DocTokenStats>& stats);

// Length of zlib.compress(bytes) in Python: a zlib stream at Z_DEFAULT_COMPRESSION (level 6).
int64_t zlib_size(const std::string& bytes);
// Mean of the m lowest values, m = max(1, floor(n * k_percent / 100)); 0 < k_percent <= 100.
double mean_lowest(std::vector<double> values, int k_percent);
// mu and sigma of log p(z) under p = softmax(row), in double.
void logit_moments(const float* row, int64_t V, double& mu, double& sigma);
void logit_moments(const double* row, int64_t V, double& mu, double& sigma);

struct MiaScores {
  // Attack name -> one score per document: "loss", "zlib", "min_k_<K>", "min_k_pp_<K>",
  // and "reference" when a reference model's statistics were given.
  std::map<std::string, std::vector<double>> by_attack;
};

// doc_bytes[i]: the text of stats[i] (see bytes_of_docs); empty when the text cannot be
// decoded, which leaves out the zlib attack. reference, when given, holds the
// reference model's statistics of the same documents in the same order (same `doc`s; its
// token count may differ, e.g. another tokenizer, as only its mean is used).
MiaScores mia_scores(const std::vector<DocTokenStats>& stats, const std::vector<std::string>& doc_bytes,
                     const std::vector<DocTokenStats>* reference = nullptr);

// P(member score > nonmember score) + P(equal) / 2 over all member/nonmember pairs: the
// Mann-Whitney U statistic over n1 * n2, counted exactly in integers.
double roc_auc(const std::vector<double>& member_scores, const std::vector<double>& nonmember_scores);

// Rule "score >= tau means member". Returns the TPR of the lowest threshold whose FPR,
// #{nonmember >= tau} / n_nonmembers, is <= fpr, with tau taken among the observed scores
// (and +infinity). A threshold cannot split tied scores, so where the allowed number of
// false positives falls inside a run of tied nonmembers, the whole run is excluded, and
// members tied with the excluded run are not counted: ties never raise the TPR.
double tpr_at_fpr(const std::vector<double>& member_scores, const std::vector<double>& nonmember_scores,
                  double fpr = 0.05);

// PrivLeak as relative AUC, in percent: (AUC_unlearned - AUC_oracle) / AUC_oracle * 100,
// where both AUCs separate forget (members) from holdout (nonmembers) documents. Near 0
// means the unlearned model looks like the retrained oracle; positive is under-unlearning.
// This is not MUSE's convention (MUSE uses 1 - AUC and Min-K% at k = 40%): both, named,
// are in mia_stats.h.
double priv_leak(double auc_unlearned, double auc_oracle);

struct MiaReport {
  std::map<std::string, double> auc, tpr_at_5_fpr;
};

// AUC and TPR at 5% FPR per attack; both score sets must have the same attacks.
MiaReport mia_report(const MiaScores& members, const MiaScores& nonmembers);

}  // namespace lethe
