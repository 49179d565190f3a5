#include "engine/parallel/watchdog.h"

#include <algorithm>
#include <sstream>

namespace lethe {

Watchdog::Watchdog(double timeout_s, std::function<void(const std::string&)> on_failure,
                   std::function<std::string()> health, std::function<void()> thread_init, bool in_order,
                   std::chrono::microseconds period)
    : timeout_s_(timeout_s),
      on_failure_(std::move(on_failure)),
      health_(std::move(health)),
      thread_init_(std::move(thread_init)),
      in_order_(in_order),
      period_(period) {
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Watchdog::watch(std::string what, Poll poll) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.push_back({std::move(what), std::move(poll), std::chrono::steady_clock::now()});
  }
  wake_.notify_all();
}

size_t Watchdog::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

bool Watchdog::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

void Watchdog::fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = true;
  }
  on_failure_(message);
}

void Watchdog::run() {
  if (thread_init_) thread_init_();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    wake_.wait(lock, [this] { return stop_ || (!entries_.empty() && !failed_); });
    if (stop_) return;
    // Poll in order, without the lock, so watch() never waits for a poll. Entries are only
    // appended by watch() and only erased here, so the iterators stay valid.
    auto it = entries_.begin();
    lock.unlock();
    std::string failure;
    const auto now = std::chrono::steady_clock::now();
    if (health_) {
      const std::string h = health_();
      if (!h.empty()) failure = h;
    }
    while (failure.empty()) {
      lock.lock();
      const bool end = it == entries_.end();
      lock.unlock();
      if (end) break;
      const Check c = it->poll();
      if (c.state == State::failed) {
        failure = it->what + " failed: " + c.error;
        break;
      }
      const double waited = std::chrono::duration<double>(now - it->since).count();
      if (c.state == State::pending && waited > timeout_s_) {
        std::ostringstream m;
        m << it->what << " made no progress for " << timeout_s_ << " s (a peer died or hangs)";
        failure = m.str();
        break;
      }
      if (c.state == State::pending && in_order_) break;  // the later ones are behind it
      lock.lock();
      it = c.state == State::done ? entries_.erase(it) : std::next(it);
      // In order, the next one's clock starts once this one is done: the time it spent
      // queued behind a slow but healthy operation is not time without progress.
      if (c.state == State::done && in_order_ && it != entries_.end()) it->since = std::max(it->since, now);
      lock.unlock();
    }
    if (!failure.empty()) {
      fail(failure);
      lock.lock();
      continue;  // on_failure returned: stop polling (the predicate holds until stop_)
    }
    lock.lock();
    if (!entries_.empty()) wake_.wait_for(lock, period_, [this] { return stop_; });
  }
}

}  // namespace lethe
