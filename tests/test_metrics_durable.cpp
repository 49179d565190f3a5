// A killed `lethe unlearn` keeps its record: every metrics.jsonl line a run checkpoint
// covers is on disk before the checkpoint is committed, and a resume cuts the file back to
// exactly those lines before it continues. The run is killed with SIGKILL at a known point
// (the LETHE_TEST_KILL_AFTER_STEP hook: after step 14, two steps past the checkpoint of
// step 12), resumed with train.resume=true, and its metrics.jsonl compared with an
// uninterrupted run's, line by line, in every field but the timing ones.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

// Fields that measure the machine, not the run: they differ between any two runs.
const char* const kTimingFields[] = {"tokens_per_s", "mfu"};

// Runs LETHE_BIN with args (stdout and stderr into log); kill_after > 0 sets the hook.
// Returns the raw wait status.
int run_lethe(const std::vector<std::string>& args, const fs::path& log, int kill_after = 0) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (kill_after > 0) ::setenv("LETHE_TEST_KILL_AFTER_STEP", std::to_string(kill_after).c_str(), 1);
    else ::unsetenv("LETHE_TEST_KILL_AFTER_STEP");
    if (!std::freopen(log.c_str(), "w", stdout) || ::dup2(STDOUT_FILENO, STDERR_FILENO) < 0) ::_exit(126);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(LETHE_BIN));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(LETHE_BIN, argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<json> read_lines(const fs::path& p) {
  std::vector<json> v;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) j = json{{"unparsable", line}};
    for (const char* f : kTimingFields) j.erase(f);
    v.push_back(j);
  }
  return v;
}

// The step a line belongs to (training lines and evaluations).
int64_t step_of(const json& j) {
  return j.contains("eval") ? j["eval"].value("step", int64_t(-1)) : j.value("step", int64_t(-1));
}

class MetricsDurable : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lethe_metrics_durable_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // GA+GD on the repo's tiny model and book splits, cut down to seconds: short
    // sequences, small evaluations, no oracle or task suite.
    const std::string src = LETHE_SOURCE_DIR;
    std::ofstream(dir_ / "ga_gd.yaml") << "method: ga_gd\n"
                                       << "model: " << src << "/data/models/tiny-lm-full\n"
                                       << "data:\n"
                                       << "  forget: " << src << "/data/tokens/books/forget.h5\n"
                                       << "  retain: " << src << "/data/tokens/books/retain.h5\n"
                                       << "  holdout: " << src << "/data/tokens/books/holdout.h5\n"
                                       << "  seq_len: 64\n"
                                       << "  min_targets: 16\n"
                                       << "terms:\n"
                                       << "  forget: {type: nll, stream: forget, weight: -1.0}\n"
                                       << "  retain: {type: nll, stream: retain, weight: 1.0}\n"
                                       << "train: {steps: 24, batch_size: 2, seed: 1, log_every: 4}\n"
                                       << "optimizer: {type: adamw, lr: 2.0e-4, schedule: constant, grad_clip: 1.0}\n"
                                       << "eval: {every: 8, max_sequences: 4, final_max_sequences: 4, mia_max_docs: 4}\n"
                                       << "output: {dir: out, checkpoint_every: 4}\n";
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::vector<std::string> args(const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"unlearn", (dir_ / "ga_gd.yaml").string(), "output.dir=" + (dir_ / out).string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  fs::path dir_;
};

TEST_F(MetricsDurable, KilledAfterCheckpointResumesWithTheSameRecord) {
  const fs::path ref = dir_ / "ref", run = dir_ / "run";
  int st = run_lethe(args("ref"), dir_ / "ref.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(dir_ / "ref.log");
  const std::vector<json> want = read_lines(ref / "metrics.jsonl");
  // The before-evaluation, 24 steps, evaluations at 8, 16 and 24.
  ASSERT_EQ(want.size(), 1u + 24u + 3u) << slurp(ref / "metrics.jsonl");

  // Killed after step 14: checkpoint 12 is the newest, steps 13 and 14 are past it.
  st = run_lethe(args("run"), dir_ / "killed.log", 14);
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "status " << st << "\n" << slurp(dir_ / "killed.log");
  ASSERT_TRUE(fs::exists(run / "checkpoints" / "step_00000012" / "COMPLETE"));
  ASSERT_FALSE(fs::exists(run / "checkpoints" / "step_00000016"));
  // Every line the checkpoint covers was on disk when the process died.
  const std::vector<json> at_kill = read_lines(run / "metrics.jsonl");
  size_t covered = 0;
  for (const auto& j : at_kill) covered += step_of(j) >= 0 && step_of(j) <= 12;
  size_t want_covered = 0;
  for (const auto& j : want) want_covered += step_of(j) <= 12;
  EXPECT_EQ(covered, want_covered) << "metrics lines of steps <= 12 on disk after the kill: " << covered << " of "
                                   << want_covered << " (" << want_covered - std::min(covered, want_covered)
                                   << " lost)";

  st = run_lethe(args("run", {"train.resume=true"}), dir_ / "resumed.log");
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(dir_ / "resumed.log");
  EXPECT_NE(slurp(dir_ / "resumed.log").find("at step 12"), std::string::npos) << slurp(dir_ / "resumed.log");
  EXPECT_EQ(slurp(dir_ / "resumed.log").find("warning"), std::string::npos) << slurp(dir_ / "resumed.log");

  const std::vector<json> got = read_lines(run / "metrics.jsonl");
  EXPECT_EQ(got.size(), want.size()) << "lines: resumed " << got.size() << ", uninterrupted " << want.size();
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
    EXPECT_EQ(got[i], want[i]) << "line " << i + 1;
  // And the run's outcome is the uninterrupted one's.
  auto final_sha = [](const fs::path& out) {
    std::ifstream in(out / "report.json");
    return json::parse(in).at("unlearned_sha256").get<std::string>();
  };
  EXPECT_EQ(final_sha(run), final_sha(ref));
}

}  // namespace
