// A resumable unlearning run: what a checkpoint under output.dir/checkpoints holds beyond
// the weights (optimizer moments, every stream's sampler cursor, the evaluations so far,
// the "before" metrics, the best-checkpoint rule's state) and the fingerprint that stops a
// resume from mixing two different runs.
#pragma once
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/data/sequence_sampler.h"
#include "engine/model/llama.h"
#include "engine/optim/optimizer.h"
#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"

namespace lethe {

struct RunState {
  int64_t step = 0;  // optimizer steps taken
  std::map<std::string, SamplerCursor> cursors;
  std::vector<EvalPoint> evals;
  ExtraMetrics before;
  double best_gap = INFINITY;
  std::string best_dir;
};

nlohmann::json eval_to_json(const EvalPoint& e);
EvalPoint eval_from_json(const nlohmann::json& j);
nlohmann::json extra_to_json(const ExtraMetrics& x);
ExtraMetrics extra_from_json(const nlohmann::json& j);

// Everything that changes the trajectory: a resume is refused when any of it differs.
nlohmann::json run_fingerprint(const Recipe& r, const std::string& model_sha256,
                               const std::map<std::string, std::string>& data_sha256);

std::string run_checkpoint_dir(const Recipe& r);  // output.dir/checkpoints
void save_run_state(const Recipe& r, LlamaModel& m, Optimizer& opt, const RunState& s,
                    const nlohmann::json& fingerprint);
// Loads the newest complete run checkpoint into m, opt and s; false when there is none.
bool load_run_state(const Recipe& r, const nlohmann::json& fingerprint, LlamaModel& m, Optimizer& opt, RunState& s);

// Keeps the metrics lines up to `step` (training lines and evaluations), dropping what an
// interrupted run wrote after its last checkpoint.
void truncate_metrics(const std::string& path, int64_t step);

}  // namespace lethe
