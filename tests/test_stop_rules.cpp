// The stop rules fire once their level is reached from the side a run starts on, including
// when one step carries the in-run value past the level (engine/unlearn/stop_rules.h).
#include <gtest/gtest.h>

#include "engine/unlearn/stop_rules.h"

namespace lethe {
namespace {

EvalPoint point(double forget, double holdout, double retain_ppl, double auc) {
  EvalPoint e;
  e.splits["forget"].nll = forget;
  e.splits["holdout"].nll = holdout;
  e.splits["retain"].ppl = retain_ppl;
  e.mia_auc = auc;
  return e;
}

TEST(StopRules, EachFiresAtItsLevelAndPastIt) {
  Recipe r;
  EXPECT_EQ(stop_rule_fired(r, point(9, 1, 99, 0.0), 1.0), "") << "every rule off";
  r.stop_mia_band = 0.03;
  EXPECT_EQ(stop_rule_fired(r, point(1, 2, 1, 0.70), 1.0), "");
  EXPECT_EQ(stop_rule_fired(r, point(1, 2, 1, 0.531), 1.0), "");
  EXPECT_EQ(stop_rule_fired(r, point(1, 2, 1, 0.53), 1.0), "MIA AUC fell to 0.530 or below");
  // From 0.70 to 0.40 in one step: past the band, not into it; the run must still stop.
  EXPECT_EQ(stop_rule_fired(r, point(1, 2, 1, 0.40), 1.0), "MIA AUC fell to 0.530 or below");
  r = Recipe();
  r.stop_forget_reaches_holdout = true;
  EXPECT_EQ(stop_rule_fired(r, point(1.9, 2.0, 1, 1.0), 1.0), "");
  EXPECT_EQ(stop_rule_fired(r, point(2.0, 2.0, 1, 1.0), 1.0), "forget NLL reached holdout NLL");
  r = Recipe();
  r.stop_retain_ratio = 1.1;
  EXPECT_EQ(stop_rule_fired(r, point(1, 2, 1.10, 1.0), 1.0), "");
  EXPECT_EQ(stop_rule_fired(r, point(1, 2, 1.11, 1.0), 1.0), "retain perplexity rose past 1.10x");
  EXPECT_EQ(stop_rule_fired(r, point(1, 2, 5.0, 1.0), 0.0), "") << "no starting perplexity: the rule is off";
}

}  // namespace
}  // namespace lethe
