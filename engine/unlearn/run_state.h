// A resumable unlearning run: what a checkpoint under output.dir/checkpoints holds beyond
// the weights (optimizer moments, every stream's sampler cursor, the evaluations so far,
// the "before" metrics, the best-checkpoint rule's state) and the fingerprint that stops a
// resume from mixing two different runs.
#pragma once
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/data/sequence_sampler.h"
#include "engine/model/llama.h"
#include "engine/io/checkpoint.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/sharded_optimizer.h"
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

// The optimizer of a one-process run (Optimizer, moments as ParamSets) or of a grid
// (ShardedOptimizer, moments over this rank's ZeRO shard or tp slice).
struct RunOptimizer {
  std::unique_ptr<Optimizer> one;
  std::unique_ptr<ShardedOptimizer> par;
  int64_t steps_taken() const { return one ? one->steps_taken() : par->steps_taken(); }
  void set_steps_taken(int64_t s) { one ? one->set_steps_taken(s) : par->set_steps_taken(s); }
};

// Writes <dir>/<name> from every rank of m's grid (call it on all of them): m's weights
// and, with opt, its optimizer moments, each rank its own shard; fill (rank 0 only) adds
// the manifest fields and small files before rank 0 commits. In one process it is a plain
// single-shard checkpoint. Returns the directory.
std::string save_checkpoint_all_ranks(const std::string& dir, const std::string& name, LlamaModel& m,
                                      RunOptimizer* opt, bool update_latest,
                                      const std::function<void(CheckpointWriter&)>& fill);

nlohmann::json eval_to_json(const EvalPoint& e);
EvalPoint eval_from_json(const nlohmann::json& j);
nlohmann::json extra_to_json(const ExtraMetrics& x);
ExtraMetrics extra_from_json(const nlohmann::json& j);

// Everything that changes the trajectory: a resume is refused when any of it differs.
nlohmann::json run_fingerprint(const Recipe& r, const std::string& model_sha256,
                               const std::map<std::string, std::string>& data_sha256);

std::string run_checkpoint_dir(const Recipe& r);  // output.dir/checkpoints
// Every rank calls both: the checkpoint holds each rank's shard, and loads into any layout.
void save_run_state(const Recipe& r, LlamaModel& m, RunOptimizer& opt, const RunState& s,
                    const nlohmann::json& fingerprint);
// Loads the newest complete run checkpoint into m, opt and s; false when there is none.
bool load_run_state(const Recipe& r, const nlohmann::json& fingerprint, LlamaModel& m, RunOptimizer& opt,
                    RunState& s);

// Keeps the metrics lines up to `step` (training lines and evaluations), dropping what an
// interrupted run wrote after its last checkpoint.
void truncate_metrics(const std::string& path, int64_t step);

}  // namespace lethe
