// TOFU's truth ratio (Maini et al. 2024, as OpenUnlearning computes it): per question,
//   R = exp(mean over wrong choices of lp_w / n_w) / exp(lp_true / n_true),
// lp the summed log-likelihood of a choice as a continuation of the question and n its
// token count: the wrong choices' geometric-mean per-token probability over the true
// answer's. R < 1: the model prefers the truth; R near 1: it cannot tell them apart.
// TOFU scores a paraphrase of the answer against perturbed answers; a multiple-choice task
// here has the answer itself and its distractors, so R reads the answer's own wording.
#pragma once
#include <cstdint>
#include <vector>

namespace lethe {

// NaN for a question with fewer than two choices (no wrong answer to compare).
double truth_ratio(const std::vector<double>& logprobs, const std::vector<int64_t>& tokens, int64_t answer);

// OpenUnlearning's two aggregates over questions (NaN entries skipped; NaN if none left):
//  - true_better = mean max(0, 1 - R): for what must be kept (higher is better);
//  - closer_to_1 = mean min(R, 1/R): for what must be forgotten (1 = cannot tell).
struct TruthRatioSummary {
  double true_better = 0, closer_to_1 = 0;
  int64_t items = 0;
};
TruthRatioSummary summarize_truth_ratios(const std::vector<double>& ratios);

}  // namespace lethe
