// Running the lethe binary or a launch script from a test: exit code, stdout, stderr, and
// the child's peak resident memory.
#pragma once
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace lethe::test {
namespace fs = std::filesystem;

struct Outcome {
  int code = -1;
  std::string out, err;
  long max_rss_kb = 0;  // ru_maxrss of the child (Linux: KiB)
};

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs argv[0] with argv (no shell), stdout/stderr to files in dir, optional extra
// environment. wait4 gives this child's own rusage, not the test's.
inline Outcome run_argv(const std::vector<std::string>& argv, const fs::path& dir,
                    const std::vector<std::string>& env = {}) {
  const std::string out = (dir / "stdout").string(), err = (dir / "stderr").string();
  std::fflush(nullptr);  // or the child's copy of unflushed output is written twice
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr)) ::_exit(126);
    for (const auto& e : env) {  // "KEY=value" sets, a bare "KEY" removes
      if (e.find('=') == std::string::npos) ::unsetenv(e.c_str());
      else ::putenv(const_cast<char*>(e.c_str()));
    }
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    ::_exit(127);
  }
  Outcome r;
  int status = 0;
  struct rusage ru {};
  if (::wait4(pid, &status, 0, &ru) != pid) return r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.max_rss_kb = ru.ru_maxrss;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// A scratch directory per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lethe_plan_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return (dir_ / name).string();
  }
  // LETHE_TEST_BIN runs the tests against another lethe (an installed one, or one built
  // outside the source tree: tools/check_install.sh).
  Outcome lethe(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    const char* other = std::getenv("LETHE_TEST_BIN");
    std::vector<std::string> a{other && *other ? other : LETHE_BIN};
    a.insert(a.end(), args.begin(), args.end());
    return run_argv(a, dir_, env);
  }
  fs::path dir_;
};

}  // namespace lethe::test
