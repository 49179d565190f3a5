// Runs the `lethe` binary as a child process with a time limit, a memory cap and a umask,
// capturing stdout and stderr: shared by the malformed-input corpus and the privacy test.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace lethe::test {

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
inline void spit(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

struct RunResult {
  int code = -1;   // exit status, or -1 when killed
  int signal = 0;  // terminating signal, or 0
  bool timed_out = false;
  std::string out, err;
};

struct RunOptions {
  int timeout_s = 60;
  rlim_t mem_cap = 0;  // RLIMIT_AS in bytes; 0 leaves it
  mode_t umask = 022;
  std::map<std::string, std::string> env;
  std::string program;  // empty: $LETHE_TEST_BIN if set (e.g. a sanitizer build), else the lethe binary
};

// stdout and stderr go to files in `dir` (not pipes: a chatty child cannot block).
inline RunResult run_program(const std::vector<std::string>& args, const std::filesystem::path& dir,
                       const RunOptions& opt = {}) {
  const std::filesystem::path out = dir / "stdout", err = dir / "stderr";
  const char* env_bin = std::getenv("LETHE_TEST_BIN");
  const std::string bin = !opt.program.empty() ? opt.program : env_bin && *env_bin ? env_bin : LETHE_BIN;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::umask(opt.umask);
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int n = ::open("/dev/null", O_RDONLY);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::dup2(n, 0);
    if (opt.mem_cap) {
      rlimit lim{opt.mem_cap, opt.mem_cap};
      ::setrlimit(RLIMIT_AS, &lim);
    }
    ::setenv("OMP_NUM_THREADS", "2", 1);
    for (const auto& [k, v] : opt.env) ::setenv(k.c_str(), v.c_str(), 1);
    std::vector<std::string> copy = args;
    std::string b = bin;
    std::vector<char*> argv{b.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execvp(b.c_str(), argv.data());
    ::_exit(127);
  }
  RunResult r;
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  while (true) {
    if (::waitpid(pid, &status, WNOHANG) == pid) break;
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(opt.timeout_s)) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace lethe::test
