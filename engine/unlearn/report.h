// The unlearning report: report.json (machine-readable), report.md (for people) and
// curves.svg (forget / retain / holdout NLL and MIA AUC over steps). It names the model,
// the data and the forgotten documents by SHA-256 only; no document text is written.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"

namespace lethe {

struct ReportInput {
  const Recipe* recipe = nullptr;
  const UnlearnResult* result = nullptr;
  const EvalPoint* oracle = nullptr;  // the oracle's metrics, when one was named
  std::string model_sha256, final_sha256, oracle_sha256;
  std::map<std::string, std::string> data_sha256;  // split -> file hash
  std::map<std::string, int64_t> data_docs;
  std::vector<std::string> forget_doc_sha256;
};

void write_report(const ReportInput& in, const std::string& dir);

}  // namespace lethe
