// The final evaluation of a model that a run does not change (the original, the oracle),
// kept under eval.cache so that runs against the same model pair (a learning-rate sweep,
// the recipes of `make results`, one recipe over seeds of its terms) score each model once.
// On the embedded books benchmark these two models are two thirds of a run's final
// evaluation.
//
// An entry is keyed by everything that decides its numbers: the model's weights (SHA-256),
// the data files and which documents each evaluation reads, every eval.* setting that the
// scores depend on, the contents of the task and canary files, the device and precision,
// and the lethe executable itself (any rebuild is a new key: numbers from older code are
// never reused). Training settings (terms, optimizer, steps, output) are not part of it.
// A file that cannot be read or parsed, or whose stored key differs, is a miss: the model
// is scored again and the entry rewritten. Entries are written whole (temporary file, then
// rename), so a killed run leaves none half-written.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "engine/core/tensor.h"
#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"

namespace lethe {

struct FixedModelEval {
  EvalPoint final_eval;            // the report sets, eval.final_max_sequences
  std::optional<EvalPoint> in_run;  // the selection sets, eval.max_sequences (the oracle's target lines)
  MiaSuite mia;
  ExtraMetrics extra;
};

// Sequences per forward of the NLL evaluations (in-run and final): 8, or fewer when a
// training step reads fewer rows per rank (batch_size / dp). An in-run evaluation runs
// while the training state is held, and its forward allocates activations for its batch
// (every layer's buffers on a device): reading more rows than a step would raise the
// run's peak above what `lethe plan` counts (at Llama-2-7B and 4096 tokens, 8 sequences
// take about 12 GiB where a step of one sequence recomputing every layer takes 0.6).
int64_t eval_batch(const Recipe& r);

// What decides a fixed model's final evaluation, as a JSON document. role: "original" or
// "oracle" (the oracle's entry also holds its in-run evaluation). report_docs and
// select_docs: per split, the SHA-256 of the documents each evaluation reads, in order.
nlohmann::json fixed_eval_key(const Recipe& r, const std::string& role, const std::string& model_sha256,
                              const std::string& tokenizer, const std::map<std::string, std::string>& data_sha256,
                              const std::map<std::string, std::string>& report_docs,
                              const std::map<std::string, std::string>& select_docs, Precision prec, Device device,
                              const std::string& executable_sha256);

// The entry's file under `dir`: <sha256 of the key>.json.
std::string fixed_eval_path(const std::string& dir, const nlohmann::json& key);

// nullopt when the entry is absent, unreadable or holds another key (why goes to `why`).
std::optional<FixedModelEval> load_fixed_eval(const std::string& dir, const nlohmann::json& key, std::string* why);

// Writes the entry; false (and why) when it holds a non-finite number, which JSON cannot
// carry, or cannot be written: a cache that cannot be written never fails the run.
bool save_fixed_eval(const std::string& dir, const nlohmann::json& key, const FixedModelEval& e, std::string* why);

nlohmann::json fixed_eval_to_json(const FixedModelEval& e);
// False when j holds a NaN or an infinity: nlohmann writes them as null, which reads back
// as an error, so such a document is not stored at all.
bool json_all_finite(const nlohmann::json& j);
FixedModelEval fixed_eval_from_json(const nlohmann::json& j);

// SHA-256 of the running executable (/proc/self/exe); empty when it cannot be read.
std::string executable_sha256();

}  // namespace lethe
