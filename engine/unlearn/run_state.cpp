#include "engine/unlearn/run_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/core/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/optimizer_checkpoint.h"
#include "engine/io/run_checkpoint.h"
#include "engine/io/model_checkpoint.h"

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

json eval_to_json(const EvalPoint& e) {
  json j = {{"step", e.step}, {"mia_auc_loss", e.mia_auc}};
  for (const auto& [n, s] : e.splits) j[n] = {{"nll", s.nll}, {"ppl", s.ppl}, {"acc", s.acc}, {"tokens", s.tokens}};
  return j;
}

EvalPoint eval_from_json(const json& j) {
  EvalPoint e;
  e.step = j.at("step").get<int64_t>();
  e.mia_auc = j.at("mia_auc_loss").get<double>();
  for (const char* n : {"forget", "retain", "holdout", "general"})
    if (j.contains(n)) {
      const json& s = j.at(n);
      e.splits[n] = {s.at("nll").get<double>(), s.at("ppl").get<double>(), s.at("acc").get<double>(),
                     s.at("tokens").get<int64_t>()};
    }
  return e;
}

json extra_to_json(const ExtraMetrics& x) {
  return {{"verbatim", x.verbatim},      {"mc", x.mc},           {"rouge_l_f1", x.rouge_l_f1},
          {"rouge_l_recall", x.rouge_l_recall}, {"exact_match", x.exact_match}, {"verbatim_docs", x.verbatim_docs},
          {"mc_acc", x.mc_acc},          {"mc_acc_norm", x.mc_acc_norm}, {"mc_items", x.mc_items},
          {"mc_truth_ratios", x.mc_truth_ratios},
          {"mc_tasks", [&] {
             json t = json::object();
             for (const auto& [name, s] : x.mc_tasks)
               t[name] = {{"items", s.items}, {"acc", s.acc}, {"acc_norm", s.acc_norm}, {"truth_ratios", s.truth_ratios}};
             return t;
           }()},
          {"canaries", [&] {
             json t = json::object();
             for (const auto& [name, s] : x.canaries)
               t[name] = {{"mean", s.mean}, {"log2_space_max", s.log2_space_max}, {"exact", s.exact},
                          {"exposures", s.exposures}};
             return t;
           }()}};
}

ExtraMetrics extra_from_json(const json& j) {
  ExtraMetrics x;
  x.verbatim = j.at("verbatim").get<bool>();
  x.mc = j.at("mc").get<bool>();
  x.rouge_l_f1 = j.at("rouge_l_f1").get<double>();
  x.rouge_l_recall = j.at("rouge_l_recall").get<double>();
  x.exact_match = j.at("exact_match").get<double>();
  x.verbatim_docs = j.at("verbatim_docs").get<int64_t>();
  x.mc_acc = j.at("mc_acc").get<double>();
  x.mc_acc_norm = j.at("mc_acc_norm").get<double>();
  x.mc_items = j.at("mc_items").get<int64_t>();
  // Truth ratios are absent in run state written before they were measured: the resumed
  // report then has none for the models scored before the pause.
  if (j.contains("mc_truth_ratios")) x.mc_truth_ratios = j.at("mc_truth_ratios").get<std::vector<double>>();
  if (j.contains("mc_tasks"))  // absent in run state written before eval.mc_tasks existed
    for (auto it = j.at("mc_tasks").begin(); it != j.at("mc_tasks").end(); ++it) {
      const json& t = it.value();
      x.mc_tasks[it.key()] = {t.at("items").get<int64_t>(), t.at("acc").get<double>(), t.at("acc_norm").get<double>(),
                              t.contains("truth_ratios") ? t.at("truth_ratios").get<std::vector<double>>()
                                                         : std::vector<double>{}};
    }
  if (j.contains("canaries"))  // absent in run state written before eval.canaries existed
    for (auto it = j.at("canaries").begin(); it != j.at("canaries").end(); ++it) {
      const json& t = it.value();
      x.canaries[it.key()] = {t.at("mean").get<double>(), t.at("log2_space_max").get<double>(),
                              t.at("exact").get<int64_t>(), t.at("exposures").get<std::vector<double>>()};
    }
  return x;
}

json run_fingerprint(const Recipe& r, const std::string& model_sha256, const std::map<std::string, std::string>& data_sha256) {
  json terms = json::array();
  for (const auto& t : r.terms)
    terms.push_back({{"type", t.type}, {"stream", t.stream}, {"weight", t.weight}, {"beta", t.beta},
                     {"delta", t.delta}, {"layer", t.layer}, {"steer", t.steer}, {"seed", t.seed}});
  // The in-run evaluations a checkpoint carries were read on the selection half or on
  // every document: a resume must not mix the two. The key is written only when the split
  // is on, so a checkpoint from before the split existed (every document) still resumes
  // with eval.selection_split: false, and only then.
  json eval = {{"every", r.eval_every}, {"max_sequences", r.eval_max_sequences}};
  if (r.eval_selection_split) eval["selection_split"] = true;
  return {{"method", r.method},
          {"model_sha256", model_sha256},
          {"data_sha256", data_sha256},
          {"terms", terms},
          {"seq_len", r.seq_len},
          {"min_targets", r.min_targets},
          {"steps", r.steps},
          {"batch_size", r.batch_size},
          {"grad_accum", r.grad_accum},
          {"seed", r.seed},
          {"trainable", r.trainable},
          {"optimizer",
           {{"type", r.optim.type}, {"beta1", r.optim.beta1}, {"beta2", r.optim.beta2}, {"eps", r.optim.eps},
            {"weight_decay", r.optim.weight_decay}, {"momentum", r.optim.momentum}, {"grad_clip", r.optim.grad_clip}}},
          {"schedule",
           {{"type", r.schedule.type}, {"lr", r.schedule.lr}, {"min_lr", r.schedule.min_lr},
            {"warmup_steps", r.schedule.warmup_steps}}},
          {"eval", eval}};
}

std::string run_checkpoint_dir(const Recipe& r) { return (fs::path(r.out_dir) / "checkpoints").string(); }

void save_run_state(const Recipe& r, LlamaModel& m, RunOptimizer& opt, const RunState& s, const json& fingerprint) {
  ProcessGrid& g = m.grid();
  // Once training is over (a stop during the final evaluation) the optimizer state is
  // released and not needed: such a checkpoint holds the weights only.
  save_checkpoint_all_ranks(run_checkpoint_dir(r), checkpoint_name(s.step), m, opt.held() ? &opt : nullptr, true,
                            [&](CheckpointWriter& w) {
    json& man = w.manifest();
    man["kind"] = "unlearn";
    man["step"] = s.step;
    man["model"] = llama_config_to_json(m.config());
    man["run"] = fingerprint;
    man["optimizer"] = {{"type", r.optim.type}, {"steps_taken", opt.steps_taken()}};
    if (!opt.held()) man["optimizer"]["state_saved"] = false;
    json cursors = json::object();
    for (const auto& [name, c] : s.cursors) cursors[name] = {{"epoch", c.epoch}, {"index", c.index}};
    json evals = json::array();
    for (const auto& e : s.evals) evals.push_back(eval_to_json(e));
    man["state"] = {{"cursors", cursors},
                    {"evals", evals},
                    {"before", extra_to_json(s.before)},
                    {"best_gap", std::isfinite(s.best_gap) ? json(s.best_gap) : json(nullptr)},
                    {"best_dir", s.best_dir},
                    {"metrics_lines", s.metrics_lines}};
    if (!s.finished.empty()) man["state"]["finished"] = s.finished;
    if (!s.final_evals.empty()) w.add_file("final_evals.json", s.final_evals.dump());
    man["parallel"] = {{"tp", g.tp()}, {"dp", g.dp()}, {"zero1", g.zero1()}};
    man["dtype"] = dtype_name(m.dtype());
    man["precision"] = precision_name(m.precision());
  });
  if (g.rank() == 0) prune_checkpoints(run_checkpoint_dir(r), r.keep_last);
  g.world().barrier();
}

bool load_run_state(const Recipe& r, const json& fingerprint, LlamaModel& m, RunOptimizer& opt, RunState& s) {
  const std::string latest = latest_checkpoint(run_checkpoint_dir(r));
  if (latest.empty()) return false;
  const Checkpoint ck = Checkpoint::open(latest);
  const json& man = ck.manifest();
  const std::string where = latest + "/manifest.json";
  LETHE_CHECK(man.value("kind", "") == "unlearn" && man.contains("run") && man.contains("state"), where,
              ": not an unlearning run checkpoint");
  for (auto it = fingerprint.begin(); it != fingerprint.end(); ++it)
    LETHE_CHECK(man["run"].contains(it.key()) && man["run"][it.key()] == it.value(), r.out_dir,
                ": holds a different run: its '", it.key(),
                "' differs from this recipe's; choose another output.dir (nothing was changed)");
  check_resume_precision(man, m.precision(), r.out_dir, "train.precision");
  try {
    // Any layout loads into any other: each rank reads its blocks of the whole tensors.
    load_params(ck, "weights", m.params());
    const bool optimizer_saved = man.at("optimizer").value("state_saved", true);
    LETHE_CHECK(optimizer_saved || man.at("state").contains("finished"), where,
                ": holds no optimizer state, which only a run whose training is over may lack");
    if (optimizer_saved) {
      load_optimizer_state(ck, opt, m.params(), latest);
      opt.set_steps_taken(man.at("optimizer").at("steps_taken").get<int64_t>());
    }
    const json& st = man.at("state");
    s.step = man.at("step").get<int64_t>();
    s.cursors.clear();
    for (auto it = st.at("cursors").begin(); it != st.at("cursors").end(); ++it)
      s.cursors[it.key()] = {it.value().at("epoch").get<int64_t>(), it.value().at("index").get<int64_t>()};
    s.evals.clear();
    for (const auto& e : st.at("evals")) s.evals.push_back(eval_from_json(e));
    s.before = extra_from_json(st.at("before"));
    s.best_gap = st.at("best_gap").is_null() ? INFINITY : st.at("best_gap").get<double>();
    s.best_dir = st.at("best_dir").get<std::string>();
    s.metrics_lines = st.value("metrics_lines", int64_t(-1));
    s.finished = st.value("finished", std::string());
    s.final_evals = ck.has_file("final_evals.json") ? json::parse(ck.read_file("final_evals.json")) : json::object();
    LETHE_CHECK(s.final_evals.is_object(), latest, "/final_evals.json: expected an object");
  } catch (const json::exception& e) {
    LETHE_FAIL(where, ": malformed run state: ", e.what());
  }
  LETHE_CHECK(!s.evals.empty(), where, ": run state holds no evaluation");
  return true;
}

namespace {
void sync_fd(int fd, const std::string& what) {
  int rc;
  do rc = ::fsync(fd);
  while (rc != 0 && errno == EINTR);
  LETHE_CHECK(rc == 0, what, ": fsync failed: ", std::strerror(errno));
}

void sync_dir_of(const std::string& path) {
  const std::string dir = fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().string();
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  LETHE_CHECK(fd >= 0, dir, ": cannot open to sync: ", std::strerror(errno));
  sync_fd(fd, dir);
  ::close(fd);
}

void write_all(int fd, const char* p, size_t n, const std::string& what) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    LETHE_CHECK(w > 0, what, ": write failed: ", std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}
}  // namespace

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::open(const std::string& path, bool append) {
  LETHE_CHECK(fd_ < 0, path, ": metrics log opened twice");
  path_ = path;
  lines_ = 0;
  if (append) {
    std::ifstream in(path, std::ios::binary);
    for (std::string line; std::getline(in, line);) ++lines_;
  }
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644);
  LETHE_CHECK(fd_ >= 0, path, ": cannot write: ", std::strerror(errno));
  sync_fd(fd_, path);
  sync_dir_of(path);  // the file's name survives a crash too
}

void MetricsLog::write(const std::string& line) {
  if (fd_ < 0) return;
  const std::string l = line + "\n";
  write_all(fd_, l.data(), l.size(), path_);
  ++lines_;
}

void MetricsLog::sync() {
  if (fd_ >= 0) sync_fd(fd_, path_);
}

int64_t truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return 0;
  std::string line, kept;
  int64_t n = 0;
  while (std::getline(in, line)) {
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) continue;  // a line cut short by the interruption
    const int64_t s = j.contains("eval") ? j["eval"].value("step", int64_t(0)) : j.value("step", int64_t(0));
    if (s <= step) {
      kept += line + "\n";
      ++n;
    }
  }
  in.close();
  // Write, sync, rename, sync the directory: a crash leaves the old file or the cut one.
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  LETHE_CHECK(fd >= 0, tmp, ": cannot write: ", std::strerror(errno));
  try {
    write_all(fd, kept.data(), kept.size(), tmp);
    sync_fd(fd, tmp);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  fs::rename(tmp, path);
  sync_dir_of(path);
  return n;
}

}  // namespace lethe
