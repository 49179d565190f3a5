// `lethe unlearn`: runs a recipe. Each step draws a batch from every stream a term reads,
// adds each term's weighted gradient, and takes one optimizer step; evaluates every N
// steps; stops at max steps or at a stop criterion; writes checkpoints, metrics (JSON
// lines), a report (JSON + Markdown, hashes of the forgotten documents, never their text)
// and an SVG of the curves.
#pragma once
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include "engine/core/device_memory.h"
#include "engine/eval/mia.h"
#include "engine/unlearn/recipe.h"

namespace lethe {

struct SplitMetrics {
  double nll = 0, ppl = 0, acc = 0;
  int64_t tokens = 0;
};

struct EvalPoint {
  int64_t step = 0;
  std::map<std::string, SplitMetrics> splits;  // forget, retain, holdout, general
  double mia_auc = 0.5;  // LOSS attack, forget (members) vs holdout, per sequence
};

// Generation-based and task-based utility, measured before, after, and for the oracle.
struct ExtraMetrics {
  bool verbatim = false, mc = false;
  double rouge_l_f1 = 0, rouge_l_recall = 0, exact_match = 0;
  int64_t verbatim_docs = 0;
  double mc_acc = 0, mc_acc_norm = 0;
  int64_t mc_items = 0;
  std::vector<double> mc_truth_ratios;  // per item (TOFU's truth ratio, engine/eval/truth_ratio.h)
  struct McScore {
    int64_t items = 0;
    double acc = 0, acc_norm = 0;
    std::vector<double> truth_ratios;
  };
  std::map<std::string, McScore> mc_tasks;  // eval.mc_tasks, by name
  struct CanaryScore {
    double mean = 0, log2_space_max = 0;  // bits
    int64_t exact = 0;                    // canaries ranked exactly (the rest from samples)
    std::vector<double> exposures;        // per canary, in file order
  };
  std::map<std::string, CanaryScore> canaries;  // eval.canaries, by name
};

// The final membership-inference suite of one model: every attack's score per document.
struct MiaSuite {
  MiaScores members, nonmembers;  // forget, holdout documents
};

struct UnlearnResult {
  std::vector<EvalPoint> evals;   // in-run (eval.max_sequences per split): before (step 0), every N steps, after
  // Evaluations at the end: "before" (the original model), "after", "oracle" (whole splits
  // unless eval.final_max_sequences caps them) and "oracle_in_run" (the in-run sample).
  std::map<std::string, EvalPoint> final_evals;
  std::map<std::string, MiaSuite> mia;  // final MIA suites: "before", "after", "oracle"
  int64_t steps_run = 0;
  std::string stop_reason;        // "max steps", the criterion that fired, "paused" (train.run_steps)
                                  // or "stopped by SIGTERM" (a stop signal; the run checkpoint is saved)
  int stopped_by = 0;             // that signal, 0 otherwise
  std::string final_dir, best_dir, report_json, report_md;
  std::map<std::string, double> mia_auc_after;       // every attack, final model
  std::map<std::string, double> mia_auc_oracle;      // every attack, oracle (when given)
  std::map<std::string, ExtraMetrics> extra;         // "before", "after", "oracle"
  // eval.selection_split: the in-run evaluations (the curve, the stop rules, the best
  // checkpoint) read the selection half of the forget and holdout documents and the final
  // evaluation (NLLs, MIA suites, PrivLeak, verdict) the report half. Documents each read,
  // per split; retain and general are whole in both.
  bool selection_split = false;
  std::map<std::string, int64_t> in_run_docs, final_docs;
  // The models whose final evaluation came from eval.cache: "original", "oracle".
  std::vector<std::string> cached;
  // On a device, this process's memory over the training steps (what `lethe plan` counts)
  // and over the final evaluation, which runs after the optimizer state and the gradients
  // are released; all zero on the CPU, and training's when no step ran here.
  CachingAllocator::Stats device_training, device_final;
  bool lead = true;  // this process is rank 0, the one that prints and writes
};

// progress_bar: redraw a status line with a bar after every step (for a terminal).
UnlearnResult run_unlearn(const Recipe& recipe, std::ostream& out, bool progress_bar = false);

}  // namespace lethe
