#include "engine/eval/mia_stats.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "engine/core/error.h"
#include "engine/core/rng.h"

namespace lethe {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One resample of n indices in [0, n) from stream `stream`, draw `r`.
std::vector<size_t> resample(const Philox& rng, size_t n, int r) {
  std::vector<size_t> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = size_t(rng.below(uint64_t(r) * n + i, n));
  return idx;
}

std::vector<double> pick(const std::vector<double>& v, const std::vector<size_t>& idx) {
  std::vector<double> out(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) out[i] = v[idx[i]];
  return out;
}

// 2.5th and 97.5th percentiles of the finite values (linear interpolation); NaN when fewer
// than 95% of the resamples gave a defined value (the interval would be conditional).
void percentile_interval(std::vector<double> v, int resamples, Interval& out) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty() || double(v.size()) < 0.95 * resamples) {
    out.lo = out.hi = kNaN;
    return;
  }
  std::sort(v.begin(), v.end());
  auto q = [&](double p) {
    const double x = p * double(v.size() - 1);
    const size_t i = size_t(std::floor(x));
    const double f = x - double(i);
    return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
  };
  out.lo = q(0.025);
  out.hi = q(0.975);
}

// Bootstraps f(member indices, nonmember indices) over documents.
Interval bootstrap(size_t n_members, size_t n_nonmembers, uint64_t seed, int resamples,
                   const std::function<double(const std::vector<size_t>*, const std::vector<size_t>*)>& f) {
  Interval out;
  out.value = f(nullptr, nullptr);
  const Philox rm(seed, 1), rn(seed, 2);
  std::vector<double> vals;
  vals.reserve(size_t(resamples));
  for (int r = 0; r < resamples; ++r) {
    const auto im = resample(rm, n_members, r), in = resample(rn, n_nonmembers, r);
    vals.push_back(f(&im, &in));
  }
  percentile_interval(std::move(vals), resamples, out);
  return out;
}

const std::vector<double>& attack(const MiaScores& s, const std::string& name, const char* who) {
  const auto it = s.by_attack.find(name);
  LETHE_CHECK(it != s.by_attack.end(), "MIA: no '", name, "' scores for the ", who);
  return it->second;
}

}  // namespace

std::map<std::string, AttackSummary> summarize_attacks(const MiaScores& members, const MiaScores& nonmembers,
                                                       uint64_t seed, int resamples) {
  LETHE_CHECK(resamples > 0, "MIA: bootstrap needs at least one resample");
  std::map<std::string, AttackSummary> out;
  for (const auto& [name, m] : members.by_attack) {
    const std::vector<double>& n = attack(nonmembers, name, "non-members");
    AttackSummary a;
    a.auc = bootstrap(m.size(), n.size(), seed, resamples, [&](const auto* im, const auto* in) {
      return im ? roc_auc(pick(m, *im), pick(n, *in)) : roc_auc(m, n);
    });
    a.tpr_at_1_fpr = tpr_at_fpr(m, n, 0.01);
    a.tpr_at_5_fpr = tpr_at_fpr(m, n, 0.05);
    out[name] = a;
  }
  LETHE_CHECK(out.size() == nonmembers.by_attack.size(), "MIA: members and non-members have different attacks");
  return out;
}

double priv_leak(PrivLeak c, double au, double ao) {
  if (c == PrivLeak::muse) return ao < 1 ? ((1 - au) - (1 - ao)) / (1 - ao) * 100 : kNaN;
  return ao > 0 ? (au - ao) / ao * 100 : kNaN;
}

const char* priv_leak_attack(PrivLeak c) { return c == PrivLeak::muse ? "min_k_40" : "loss"; }
const char* priv_leak_name(PrivLeak c) { return c == PrivLeak::muse ? "muse_min_k_40" : "relative_auc_loss"; }
const char* priv_leak_definition(PrivLeak c) {
  return c == PrivLeak::muse
             ? "MUSE / OpenUnlearning: ((1 - AUC_unlearned) - (1 - AUC_oracle)) / (1 - AUC_oracle) * 100, Min-K% "
               "attack at k = 40%, AUC of forget (members) vs holdout (non-members)"
             : "(AUC_unlearned - AUC_oracle) / AUC_oracle * 100, LOSS attack, AUC of forget (members) vs holdout "
               "(non-members)";
}

Interval priv_leak_interval(PrivLeak c, const MiaScores& mu, const MiaScores& nu, const MiaScores& mo,
                            const MiaScores& no, uint64_t seed, int resamples) {
  const std::string a = priv_leak_attack(c);
  const auto &m1 = attack(mu, a, "unlearned model's members"), &n1 = attack(nu, a, "unlearned model's non-members");
  const auto &m2 = attack(mo, a, "oracle's members"), &n2 = attack(no, a, "oracle's non-members");
  LETHE_CHECK(m1.size() == m2.size() && n1.size() == n2.size(), "MIA: the unlearned model was scored on ", m1.size(),
              "+", n1.size(), " documents and the oracle on ", m2.size(), "+", n2.size(), "; PrivLeak pairs them");
  return bootstrap(m1.size(), n1.size(), seed, resamples, [&](const auto* im, const auto* in) {
    if (!im) return priv_leak(c, roc_auc(m1, n1), roc_auc(m2, n2));
    return priv_leak(c, roc_auc(pick(m1, *im), pick(n1, *in)), roc_auc(pick(m2, *im), pick(n2, *in)));
  });
}

}  // namespace lethe
