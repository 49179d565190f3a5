#include "engine/io/read_deadline.h"

#include <unistd.h>

#include <chrono>
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
      if (Clock::now() < first->second.deadline) {
        cv_.wait_until(lock, first->second.deadline);
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
}  // namespace

double ReadDeadline::limit_seconds(int64_t file_bytes) {
  if (const char* env = std::getenv("LETHE_READ_TIMEOUT_S")) {
    char* end = nullptr;
    const double s = std::strtod(env, &end);
    LETHE_CHECK(end != env && *end == '\0' && s >= 0 && s < 1e9, "LETHE_READ_TIMEOUT_S must be a number of seconds >= 0 ",
                "(0 disables the read watchdog), got '", env, "'");
    return s;
  }
  return 120.0 + double(file_bytes > 0 ? file_bytes : 0) / 10e6;
}

ReadDeadline::ReadDeadline(const std::string& path, int64_t file_bytes) {
  const double s = limit_seconds(file_bytes);
  if (s > 0) id_ = Watchdog::get().add(path, s);
}

ReadDeadline::~ReadDeadline() {
  if (id_) Watchdog::get().remove(id_);
}

}  // namespace lethe
