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
#include "engine/io/run_checkpoint.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/run_optimizer.h"
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
  // Lines of metrics.jsonl written before this checkpoint (rank 0's count; -1: not
  // recorded, a checkpoint of an older version).
  int64_t metrics_lines = -1;
  // Set when training is over and a stop signal came during the final evaluation: why
  // training ended ("max steps", a stop rule), so that a resume skips straight to the
  // evaluation; empty while steps remain.
  std::string finished;
  // The final evaluation's completed parts at that moment, by model ("original",
  // "unlearned", "oracle"): {"key": what decided the numbers, "eval": the FixedModelEval}.
  // Stored beside the manifest as final_evals.json.
  nlohmann::json final_evals = nlohmann::json::object();
};

// metrics.jsonl as rank 0 writes it. Every line goes to the file at once (unbuffered: a
// killed process loses nothing it wrote), and sync() makes the lines durable (fsync), so
// that the lines a run checkpoint covers are on disk before the checkpoint is committed.
// Closed (ranks other than 0), every call does nothing.
class MetricsLog {
 public:
  MetricsLog() = default;
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // append: continue the lines already there (a resumed run, after truncate_metrics);
  // otherwise start empty. Creating the file also syncs its directory entry.
  void open(const std::string& path, bool append);
  void write(const std::string& line);  // one JSON object; the newline is added
  void sync();
  int64_t lines() const { return lines_; }

 private:
  std::string path_;
  int fd_ = -1;
  int64_t lines_ = 0;
};

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

// Cuts metrics.jsonl back to the lines the resumed checkpoint covers: the lines up to `step`
// (training lines and evaluations), dropping what an interrupted run wrote after that
// checkpoint (and a line cut short by the kill), so the resumed run appends no duplicate.
// The cut file is synced before it replaces the old one. Returns the lines kept.
int64_t truncate_metrics(const std::string& path, int64_t step);

}  // namespace lethe
