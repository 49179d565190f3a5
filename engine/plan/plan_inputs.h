// Turning command-line names into planner inputs: a model preset name or YAML path, a
// recipe YAML or method name. Kept apart from the formulas so those stay file-free.
#pragma once
#include <string>
#include <vector>

#include "engine/plan/memory_plan.h"
#include "engine/unlearn/recipe.h"

namespace lethe::plan {

// Directories searched for configs/<kind>/NAME.yaml, in order: $LETHE_CONFIG_DIR, the
// install prefix's share/lethe/configs (the prefix is the executable's parent directory),
// the source tree the binary was built from, the working directory.
std::string find_config(const std::string& kind, const std::string& name_or_path);
// The first of those directories that holds configs/<kind> ("" if none does).
std::string config_dir(const std::string& kind);

// The model config: a YAML path, or a preset name from configs/models.
LlamaConfig resolve_model(const std::string& name_or_path);

// What a recipe needs of memory; `train` (plain descent) needs nothing extra.
RecipeNeeds recipe_needs(const Recipe& r, const LlamaConfig& model);

}  // namespace lethe::plan
