#include "engine/unlearn/eval_cache.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/core/error.h"
#include "engine/core/precision.h"
#include "engine/io/sha256.h"
#include "engine/unlearn/run_state.h"

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string file_sha(const std::string& path) { return to_hex(sha256_file(path)); }

json mia_to_json(const MiaScores& s) { return s.by_attack; }
MiaScores mia_from_json(const json& j) { return {j.get<std::map<std::string, std::vector<double>>>()}; }

}  // namespace

bool json_all_finite(const json& j) {
  if (j.is_number_float()) return std::isfinite(j.get<double>());
  if (j.is_structured())
    for (const auto& v : j)
      if (!json_all_finite(v)) return false;
  return true;
}

int64_t eval_batch(const Recipe& r) {
  return std::clamp<int64_t>(r.batch_size / std::max(r.parallel.dp, 1), 1, 8);
}

json fixed_eval_key(const Recipe& r, const std::string& role, const std::string& model_sha256,
                    const std::string& tokenizer, const std::map<std::string, std::string>& data_sha256,
                    const std::map<std::string, std::string>& report_docs,
                    const std::map<std::string, std::string>& select_docs, Precision prec, Device device,
                    const std::string& executable_sha256) {
  json tasks = json::object(), canaries = json::object();
  if (!r.mc_task.empty()) tasks[""] = file_sha(r.mc_task);
  for (const auto& [name, path] : r.mc_tasks) tasks[name] = file_sha(path);
  for (const auto& [name, path] : r.canaries) canaries[name] = file_sha(path);
  // The batch decides which rows share a product (another GEMM algorithm on a GPU), so
  // the scores can differ in their last bits between batch sizes.
  json eval = {{"seq_len", r.seq_len},
               {"batch", eval_batch(r)},
               {"final_max_sequences", r.eval_final_max_sequences},
               {"selection_split", r.eval_selection_split},
               {"mia_max_docs", r.mia_max_docs},
               {"mia_max_tokens", r.mia_max_tokens},
               {"verbatim", {r.verbatim_prefix, r.verbatim_continuation, r.verbatim_max_docs}},
               {"mc_tasks", tasks},
               {"canaries", canaries}};
  // The canary samples are seeded by train.seed; without canaries the seed changes nothing.
  if (!r.canaries.empty()) eval["canary_seed"] = r.seed;
  json k = {{"format", 1},
            {"role", role},
            {"model_sha256", model_sha256},
            {"tokenizer", tokenizer},
            {"data_sha256", data_sha256},
            {"report_documents_sha256", report_docs},
            {"precision", precision_name(prec)},
            {"device", device == Device::cuda ? "cuda" : "cpu"},
            {"executable_sha256", executable_sha256},
            {"eval", eval}};
  if (role == "oracle") {
    k["selection_documents_sha256"] = select_docs;
    k["eval"]["max_sequences"] = r.eval_max_sequences;
  }
  return k;
}

std::string fixed_eval_path(const std::string& dir, const json& key) {
  const std::string s = key.dump();
  return (fs::path(dir) / (to_hex(sha256(s.data(), s.size())) + ".json")).string();
}

json fixed_eval_to_json(const FixedModelEval& e) {
  json j = {{"final_eval", eval_to_json(e.final_eval)},
            {"mia", {{"members", mia_to_json(e.mia.members)}, {"nonmembers", mia_to_json(e.mia.nonmembers)}}},
            {"extra", extra_to_json(e.extra)}};
  if (e.in_run) j["in_run"] = eval_to_json(*e.in_run);
  return j;
}

FixedModelEval fixed_eval_from_json(const json& j) {
  FixedModelEval e;
  e.final_eval = eval_from_json(j.at("final_eval"));
  if (j.contains("in_run")) e.in_run = eval_from_json(j.at("in_run"));
  e.mia.members = mia_from_json(j.at("mia").at("members"));
  e.mia.nonmembers = mia_from_json(j.at("mia").at("nonmembers"));
  e.extra = extra_from_json(j.at("extra"));
  return e;
}

std::optional<FixedModelEval> load_fixed_eval(const std::string& dir, const json& key, std::string* why) {
  const std::string path = fixed_eval_path(dir, key);
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    if (why) *why = "no entry";
    return std::nullopt;
  }
  try {
    std::ifstream in(path);
    const json j = json::parse(in);
    if (j.at("key") != key) {
      if (why) *why = path + " holds another key";
      return std::nullopt;
    }
    FixedModelEval e = fixed_eval_from_json(j.at("result"));
    if (key.at("role") == "oracle" && !e.in_run) {
      if (why) *why = path + " has no in-run evaluation";
      return std::nullopt;
    }
    return e;
  } catch (const std::exception& ex) {
    if (why) *why = path + " cannot be read (" + ex.what() + ")";
    return std::nullopt;
  }
}

bool save_fixed_eval(const std::string& dir, const json& key, const FixedModelEval& e, std::string* why) {
  const json result = fixed_eval_to_json(e);
  if (!json_all_finite(result)) {
    if (why) *why = "it holds a non-finite number";
    return false;
  }
  const std::string path = fixed_eval_path(dir, key);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  fs::create_directories(dir, ec);
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << json{{"key", key}, {"result", result}}.dump(1) << "\n";
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      if (why) *why = "cannot write " + tmp;
      return false;
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    if (why) *why = "cannot rename " + tmp + " to " + path + ": " + ec.message();
    return false;
  }
  return true;
}

std::string executable_sha256() {
  try {
    return file_sha("/proc/self/exe");
  } catch (const std::exception&) {
    return "";
  }
}

}  // namespace lethe
