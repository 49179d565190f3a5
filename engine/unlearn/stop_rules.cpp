#include "engine/unlearn/stop_rules.h"

#include "engine/unlearn/progress.h"

namespace lethe {

std::string stop_rule_fired(const Recipe& r, const EvalPoint& e, double retain_ppl0) {
  if (r.stop_forget_reaches_holdout && e.splits.at("forget").nll >= e.splits.at("holdout").nll)
    return "forget NLL reached holdout NLL";
  // Membership inference falls from near 1 towards chance as the forget set is unlearned:
  // the rule fires once the AUC is at most 0.5 + band. Reading it as |AUC - 0.5| <= band
  // would miss a step that takes the AUC from above the band to below it.
  if (r.stop_mia_band > 0 && e.mia_auc <= 0.5 + r.stop_mia_band)
    return "MIA AUC fell to " + fmt("%.3f", 0.5 + r.stop_mia_band) + " or below";
  if (r.stop_retain_ratio > 0 && retain_ppl0 > 0 && e.splits.count("retain") &&
      e.splits.at("retain").ppl > r.stop_retain_ratio * retain_ppl0)
    return "retain perplexity rose past " + fmt("%.2f", r.stop_retain_ratio) + "x";
  return "";
}

}  // namespace lethe
