// Turning command-line names into planner inputs: a model preset name or YAML path, a
// recipe YAML or method name. Kept apart from the formulas so those stay file-free.
#pragma once
#include <string>
#include <vector>

#include "engine/plan/memory_plan.h"
#include "engine/unlearn/recipe.h"

namespace lethe::plan {

// Directories searched for configs/<kind>/NAME.yaml: next to the executable's parent (a
// build directory inside the repository), then the working directory.
std::string find_config(const std::string& kind, const std::string& name_or_path);

// The model config: a YAML path, or a preset name from configs/models.
LlamaConfig resolve_model(const std::string& name_or_path);

// What a recipe needs of memory; `train` (plain descent) needs nothing extra.
RecipeNeeds recipe_needs(const Recipe& r, const LlamaConfig& model);

}  // namespace lethe::plan
