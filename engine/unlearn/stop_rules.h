// The stop rules (stop.* in a recipe), read at each in-run evaluation: which one fired, or
// "" to go on. Each is one-sided, a level reached from the side unlearning starts on,
// so a rule cannot be stepped over between two evaluations.
#pragma once
#include <string>

#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"

namespace lethe {

// e: the in-run evaluation (the selection half of forget and holdout); retain_ppl0: the
// retain perplexity before the first step (0: unknown, the retain rule is off).
std::string stop_rule_fired(const Recipe& r, const EvalPoint& e, double retain_ppl0);

}  // namespace lethe
