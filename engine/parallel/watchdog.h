// A thread that watches started operations the host does not wait for: NCCL collectives,
// which the compute stream waits for through events instead of the host (so a step has no
// host synchronisation per collective). Nothing on the host then notices a collective that
// never completes (a peer died or hangs): the next host synchronisation would block
// forever. The watchdog polls each operation until it completes; the first that fails, or
// is still pending `timeout` after it could start (after it was watched, and in order mode
// after the one before it completed), or a failed health check, calls on_failure once,
// from the watchdog's thread, with a message naming it. The NCCL backend's handler ends
// the process (abort_rank), so the job ends.
#pragma once
#include <chrono>
#include <condition_variable>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>

namespace lethe {

class Watchdog {
 public:
  enum class State { pending, done, failed };
  struct Check {
    State state = State::pending;
    std::string error;  // why, when failed
  };
  using Poll = std::function<Check()>;

  // timeout_s: seconds an operation may stay pending (infinity: never times out).
  // health: polled with the operations while any is pending; a non-empty string is a
  // failure (NCCL's asynchronous error). thread_init runs first on the watchdog's thread
  // (the CUDA device is per thread). on_failure may end the process; if it returns, the
  // watchdog stops polling and failed() is true. in_order: the operations complete in the
  // order they are watched (one CUDA stream), so a sweep stops at the first one still
  // pending instead of polling every later one (thousands, in a ZeRO step).
  Watchdog(double timeout_s, std::function<void(const std::string&)> on_failure,
           std::function<std::string()> health = {}, std::function<void()> thread_init = {}, bool in_order = false,
           std::chrono::microseconds period = std::chrono::milliseconds(10));
  ~Watchdog();  // stops the thread; operations still pending are no longer watched
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Watches one started operation; `what` names it in the failure message. poll runs on
  // the watchdog's thread until it reports done or failed, then is destroyed there.
  void watch(std::string what, Poll poll);
  size_t pending() const;
  bool failed() const;

 private:
  struct Entry {
    std::string what;
    Poll poll;
    std::chrono::steady_clock::time_point since;  // when it could start running
  };
  void run();
  void fail(const std::string& message);

  const double timeout_s_;
  const std::function<void(const std::string&)> on_failure_;
  const std::function<std::string()> health_;
  const std::function<void()> thread_init_;
  const bool in_order_;
  const std::chrono::microseconds period_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::list<Entry> entries_;
  bool stop_ = false, failed_ = false;
  std::thread thread_;
};

}  // namespace lethe
