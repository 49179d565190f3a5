// Uncertainty and the two PrivLeak conventions for the final membership-inference suite.
//
// A few dozen member and non-member documents give an AUC with a standard error near
// 0.08, so a point estimate cannot say whether a run is within 5% of its oracle. Every
// AUC is reported with a 95% bootstrap interval (documents resampled with replacement,
// members and non-members separately, 1000 times, percentile interval), and PrivLeak's
// interval resamples the same documents for the unlearned model and the oracle (a
// paired bootstrap: both models scored the same documents, in the same order).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/eval/mia.h"

namespace lethe {

inline constexpr int kBootstrapResamples = 1000;

struct Interval {
  double value = 0, lo = 0, hi = 0;  // lo/hi: NaN when too few resamples were defined
};

struct AttackSummary {
  Interval auc;
  double tpr_at_1_fpr = 0, tpr_at_5_fpr = 0;
};

// AUC with its interval and TPR at 1% and 5% FPR, per attack. Same attacks on both sides.
std::map<std::string, AttackSummary> summarize_attacks(const MiaScores& members, const MiaScores& nonmembers,
                                                       uint64_t seed, int resamples = kBootstrapResamples);

// The two PrivLeak conventions in use, both in percent; both are NaN where undefined.
//  - MUSE / OpenUnlearning: on the AUC of "non-member scores higher" (1 - our AUC), with
//    the Min-K% attack at k = 40%: ((1 - a_u) - (1 - a_o)) / (1 - a_o) * 100.
//  - relative AUC (lethe's earlier report, LOSS attack): (a_u - a_o) / a_o * 100.
// Both read 0 for a model indistinguishable from the oracle; they differ in sign and scale.
enum class PrivLeak { muse, relative_auc };
double priv_leak(PrivLeak convention, double auc_unlearned, double auc_oracle);
const char* priv_leak_attack(PrivLeak convention);  // "min_k_40" or "loss"
const char* priv_leak_name(PrivLeak convention);     // key in reports
const char* priv_leak_definition(PrivLeak convention);

// PrivLeak of `convention` with a paired bootstrap interval; the unlearned model's and the
// oracle's scores must cover the same documents in the same order.
Interval priv_leak_interval(PrivLeak convention, const MiaScores& members_unlearned,
                            const MiaScores& nonmembers_unlearned, const MiaScores& members_oracle,
                            const MiaScores& nonmembers_oracle, uint64_t seed, int resamples = kBootstrapResamples);

}  // namespace lethe
