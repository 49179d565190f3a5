#include "engine/io/untrusted_read.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

#include "engine/core/error.h"

namespace lethe {

namespace {
using Clock = std::chrono::steady_clock;

struct Watch {
  Clock::time_point deadline;
  std::string path;
  double seconds;
};

// One watchdog thread for the process, started by the first deadline and never joined:
// it sleeps until the earliest open deadline and ends the process if that read is still
// running then.
class Watchdog {
 public:
  static Watchdog& get() {
    static Watchdog* w = new Watchdog();  // never destroyed: the thread may outlive main's statics
    return *w;
  }
  uint64_t add(const std::string& path, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = ++next_;
    watches_[id] = {Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)),
                    path, seconds};
    if (!started_) {
      std::thread([this] { run(); }).detach();
      started_ = true;
    }
    cv_.notify_one();
    return id;
  }
  void remove(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    watches_.erase(id);
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (watches_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto first = watches_.begin();
      for (auto it = watches_.begin(); it != watches_.end(); ++it)
        if (it->second.deadline < first->second.deadline) first = it;
      // A copy: the entry may be erased while the wait has the lock released.
      const Clock::time_point deadline = first->second.deadline;
      if (Clock::now() < deadline) {
        cv_.wait_until(lock, deadline);
        continue;
      }
      // The reading thread is stuck inside a library call: end the process. write(2) and
      // _exit, because the stuck thread may hold locks that stdio or exit handlers need.
      const std::string msg = "lethe: error: " + first->second.path + ": reading it did not finish within " +
                              std::to_string(int64_t(first->second.seconds)) +
                              " s; the file is malformed (or the file system is stalled). Nothing was written. "
                              "LETHE_READ_TIMEOUT_S sets the limit.\n";
      [[maybe_unused]] const ssize_t n = ::write(2, msg.data(), msg.size());
      ::_exit(1);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Watch> watches_;
  uint64_t next_ = 0;
  bool started_ = false;
};
// The crash message of the innermost open read, formatted when the read starts: a signal
// handler may only call async-signal-safe functions, so it writes these bytes as they are.
std::atomic<const char*> g_crash_message{nullptr};

// The handlers that were there before (Open MPI's backtrace, a sanitizer's report).
struct sigaction g_previous[NSIG];

extern "C" void on_crash(int sig) {
  const char* msg = g_crash_message.load();
  if (msg == nullptr) {
    // Not inside a guarded read: put the previous handler back and return, so the
    // faulting instruction runs again under it (a raise() for SIGABRT).
    ::sigaction(sig, &g_previous[sig], nullptr);
    if (sig == SIGABRT) ::raise(sig);
    return;
  }
  [[maybe_unused]] const ssize_t n = ::write(2, msg, std::strlen(msg));
  ::_exit(1);
}

void install_crash_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    // An alternate stack, so that a stack overflow inside the library is reported too.
    static char alt[1 << 16];
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    ::sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) ::sigaction(sig, &sa, &g_previous[sig]);
#if !defined(__SANITIZE_ADDRESS__)
    // glibc aborts on the heap corruption an overrun inside the library leaves behind.
    // Not under AddressSanitizer, which aborts to report a memory error: that report must
    // fail the run, not turn into a clean error.
    ::sigaction(SIGABRT, &sa, &g_previous[SIGABRT]);
#endif
  });
}

const char* crash_message(const std::string& path) {
  // Kept for the process's lifetime: a handler may read it at any time. One per file
  // path read, so the memory is bounded by the files a run opens.
  static std::mutex mu;
  static std::map<std::string, std::string> messages;
  std::lock_guard<std::mutex> lock(mu);
  auto [it, fresh] = messages.try_emplace(path);
  if (fresh)
    it->second = "lethe: error: " + path +
                 ": the HDF5 library crashed reading it; the file is malformed. Nothing was written.\n";
  return it->second.c_str();
}
}  // namespace

double UntrustedRead::limit_seconds(int64_t file_bytes) {
  if (const char* env = std::getenv("LETHE_READ_TIMEOUT_S")) {
    char* end = nullptr;
    const double s = std::strtod(env, &end);
    LETHE_CHECK(end != env && *end == '\0' && s >= 0 && s < 1e9, "LETHE_READ_TIMEOUT_S must be a number of seconds >= 0 ",
                "(0 disables the read watchdog), got '", env, "'");
    return s;
  }
  return 120.0 + double(file_bytes > 0 ? file_bytes : 0) / 10e6;
}

UntrustedRead::UntrustedRead(const std::string& path, int64_t file_bytes) {
  const double s = limit_seconds(file_bytes);
  install_crash_handler();
  prev_message_ = g_crash_message.exchange(crash_message(path));
  if (s > 0) id_ = Watchdog::get().add(path, s);
}

UntrustedRead::~UntrustedRead() {
  if (id_) Watchdog::get().remove(id_);
  g_crash_message.store(prev_message_);
}

}  // namespace lethe
