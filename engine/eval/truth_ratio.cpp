#include "engine/eval/truth_ratio.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/core/error.h"

namespace lethe {

double truth_ratio(const std::vector<double>& logprobs, const std::vector<int64_t>& tokens, int64_t answer) {
  LETHE_CHECK(logprobs.size() == tokens.size(), "truth ratio: ", logprobs.size(), " log-likelihoods for ",
              tokens.size(), " token counts");
  LETHE_CHECK(answer >= 0 && answer < int64_t(logprobs.size()), "truth ratio: answer ", answer, " outside ",
              logprobs.size(), " choices");
  if (logprobs.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  double wrong = 0;
  for (size_t c = 0; c < logprobs.size(); ++c) {
    LETHE_CHECK(tokens[c] > 0, "truth ratio: choice ", c, " has no tokens");
    if (int64_t(c) != answer) wrong += logprobs[c] / double(tokens[c]);
  }
  wrong /= double(logprobs.size() - 1);
  // In log space, so no epsilon is needed for a true answer of probability near 0. The
  // clamp keeps R finite (JSON has no infinity) for a choice of probability 0; real
  // per-token log-likelihoods differ by tens of nats, far inside it.
  const double log_r = wrong - logprobs[size_t(answer)] / double(tokens[size_t(answer)]);
  return std::exp(std::clamp(log_r, -700.0, 700.0));
}

TruthRatioSummary summarize_truth_ratios(const std::vector<double>& ratios) {
  TruthRatioSummary s;
  for (const double r : ratios) {
    if (std::isnan(r)) continue;
    s.true_better += std::max(0.0, 1.0 - r);
    s.closer_to_1 += std::exp(-std::abs(std::log(r)));  // min(R, 1/R), also for R = 0 or inf
    ++s.items;
  }
  if (s.items == 0) {
    s.true_better = s.closer_to_1 = std::numeric_limits<double>::quiet_NaN();
    return s;
  }
  s.true_better /= double(s.items);
  s.closer_to_1 /= double(s.items);
  return s;
}

}  // namespace lethe
