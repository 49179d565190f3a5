// A recipe: which model to unlearn, the data streams, the weighted terms, the optimizer,
// evaluation, stop criteria and outputs. configs/recipes/*.yaml hold one per method.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/model/run_device.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/schedule.h"
#include "engine/parallel/grid.h"
#include "engine/unlearn/terms.h"

namespace lethe {

struct Recipe {
  std::string file;             // the YAML it came from
  std::string method;           // name used in logs and reports
  std::string model, oracle;    // paths (oracle optional)
  std::string forget, retain, holdout, general;  // token datasets (retain/general optional)
  int64_t seq_len = 128, min_targets = 16;
  std::vector<TermSpec> terms;
  int64_t steps = 100, batch_size = 8, grad_accum = 1, log_every = 5;
  uint64_t seed = 1;
  std::vector<std::string> trainable;  // name substrings; empty = every parameter
  OptimConfig optim;
  LRSchedule schedule;
  int64_t eval_every = 0, eval_max_sequences = 256;  // 0: evaluate only before and after
  // The final evaluation of the original, unlearned and oracle models reads this many
  // sequences of each split; 0 (the default) reads whole splits.
  int64_t eval_final_max_sequences = 0;
  // Selection and stopping on one half of the forget and holdout documents, reporting on
  // the other (split_documents_by_hash): the in-run evaluations that the stop rules and the
  // best checkpoint read see only the selection half, the final evaluation only the report
  // half. false: both read every document.
  bool eval_selection_split = true;
  int64_t mia_max_docs = 0;  // documents per split for the final MIA suite (0 = all)
  int64_t mia_max_tokens = 0;  // score each document's first tokens only (whole seq_len chunks; 0 = all)
  // Verbatim memorisation of forget documents (greedy continuation of a prefix) before,
  // after and for the oracle; 0 tokens disables it.
  int64_t verbatim_prefix = 0, verbatim_continuation = 0, verbatim_max_docs = 8;
  std::string mc_task;  // multiple-choice JSONL task scored before/after/oracle (optional)
  // More named multiple-choice tasks (eval.mc_tasks: {name: file}), each scored and
  // reported like mc_task: e.g. what should be forgotten and what must be kept.
  std::vector<std::pair<std::string, std::string>> mc_tasks;
  // Canary files (eval.canaries: {name: file}, engine/eval/exposure.h): the exposure of
  // each set's secrets, before/after/oracle.
  std::vector<std::pair<std::string, std::string>> canaries;
  // eval.cache: a directory of the original's and oracle's final evaluations
  // (engine/unlearn/eval_cache.h), shared by runs against the same pair; empty: off.
  std::string eval_cache;
  bool stop_forget_reaches_holdout = false;  // forget NLL >= holdout NLL (the seed's criterion)
  double stop_mia_band = 0;                  // AUC <= 0.5 + band (reached from above)
  double stop_retain_ratio = 0;              // retain perplexity > ratio * initial
  std::string out_dir;
  bool export_hf = false;
  // Resumable checkpoints of the whole run (weights, optimizer, data cursors, evaluations)
  // under out_dir/checkpoints every N steps (0: none); the newest keep_last are kept.
  int64_t checkpoint_every = 0, keep_last = 1;
  bool resume = false;    // continue the run found in out_dir
  int64_t run_steps = 0;  // stop this invocation after this many steps, resumable (0: to the end)
  // Process grid (under mpirun / srun): tp x dp ranks, ZeRO-1 over dp. Each dp rank runs
  // batch_size / dp rows of every batch.
  ParallelConfig parallel;
  // train.device and train.precision (engine/model/run_device.h); every model of the run
  // (unlearned, frozen reference, oracle) computes in this precision.
  DeviceChoice device = DeviceChoice::automatic;
  std::optional<Precision> precision;
  std::string device_key = "train.device";
  // train.recompute: layers whose activations the backward recomputes (the first ones);
  // true is every layer (kRecomputeAll until the model's depth is known), false none.
  static constexpr int64_t kRecomputeAll = -1;
  int64_t recompute_layers = 0;
  std::string recompute_key = "train.recompute";
  // The layer count for a model of `n_layers`: an error naming the key beyond it.
  int64_t recompute_for(int64_t n_layers) const;

  bool uses_stream(const std::string& s) const;
};

// Validates every key (errors name the file and key); `model.x=...`-style overrides use
// dotted paths into the recipe.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace lethe
