// The watchdog behind NCCL's host-free collectives (engine/parallel/watchdog.h): operations
// that complete are dropped, one that stays pending past the timeout or fails calls the
// failure handler once with its name, and a failed health check does too. The operations
// here are flags the test sets, standing in for CUDA events.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/parallel/failure.h"
#include "engine/parallel/watchdog.h"

namespace lethe {
namespace {

using namespace std::chrono_literals;

struct Failures {
  std::mutex mu;
  std::vector<std::string> messages;
  void add(const std::string& m) {
    std::lock_guard<std::mutex> lock(mu);
    messages.push_back(m);
  }
  std::vector<std::string> get() {
    std::lock_guard<std::mutex> lock(mu);
    return messages;
  }
};

Watchdog::Poll flag_poll(std::shared_ptr<std::atomic<int>> state) {
  return [state] {
    const int s = state->load();
    return Watchdog::Check{s == 0 ? Watchdog::State::pending : s == 1 ? Watchdog::State::done : Watchdog::State::failed,
                           s == 2 ? "the event reported an error" : ""};
  };
}

// Polls until pred holds or 10 s pass (a loaded machine may be slow; the test only needs
// the watchdog to get there eventually).
template <class F>
bool eventually(F pred) {
  for (auto t0 = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() - t0 < 10s;) {
    if (pred()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

TEST(Watchdog, CompletedOperationsAreDroppedAndNothingFails) {
  Failures f;
  Watchdog w(3600.0, [&](const std::string& m) { f.add(m); });
  std::vector<std::shared_ptr<std::atomic<int>>> ops;
  for (int i = 0; i < 50; ++i) {
    ops.push_back(std::make_shared<std::atomic<int>>(0));
    w.watch("ncclAllReduce #" + std::to_string(i), flag_poll(ops.back()));
  }
  EXPECT_EQ(w.pending(), 50u);
  for (auto& o : ops) *o = 1;
  EXPECT_TRUE(eventually([&] { return w.pending() == 0; }));
  EXPECT_TRUE(f.get().empty());
  EXPECT_FALSE(w.failed());
}

// In order (one CUDA stream), an operation behind a pending one is not polled: it cannot
// have completed first, and polling thousands of them each period would load a core.
TEST(Watchdog, InOrderSweepsStopAtTheFirstPendingOperation) {
  Failures f;
  auto first = std::make_shared<std::atomic<int>>(0), second = std::make_shared<std::atomic<int>>(1);
  auto second_polls = std::make_shared<std::atomic<int>>(0);
  Watchdog w(3600.0, [&](const std::string& m) { f.add(m); }, {}, {}, /*in_order=*/true);
  w.watch("first", flag_poll(first));
  w.watch("second", [second, second_polls] {
    ++*second_polls;
    return flag_poll(second)();
  });
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(second_polls->load(), 0);
  EXPECT_EQ(w.pending(), 2u);
  *first = 1;
  EXPECT_TRUE(eventually([&] { return w.pending() == 0; }));
  EXPECT_GE(second_polls->load(), 1);
  EXPECT_TRUE(f.get().empty());
}

// In order, an operation's clock starts when the one before it completes: time spent
// queued behind a slow but healthy collective is not time without progress.
TEST(Watchdog, InOrderClocksStartWhenTheOperationBeforeCompletes) {
  Failures f;
  auto slow = std::make_shared<std::atomic<int>>(0), next = std::make_shared<std::atomic<int>>(0);
  // Each runs 300 ms of a 500 ms timeout (200 ms of slack for a loaded machine); the second
  // completes 600 ms after it was watched, which a clock started at watch() would fail.
  Watchdog w(0.5, [&](const std::string& m) { f.add(m); }, {}, {}, /*in_order=*/true,
             std::chrono::milliseconds(1));
  w.watch("slow", flag_poll(slow));
  w.watch("next", flag_poll(next));
  std::this_thread::sleep_for(300ms);
  *slow = 1;
  ASSERT_TRUE(eventually([&] { return w.pending() == 1; }));
  std::this_thread::sleep_for(300ms);
  *next = 1;
  EXPECT_TRUE(eventually([&] { return w.pending() == 0; }));
  EXPECT_TRUE(f.get().empty()) << f.get()[0];
}

TEST(Watchdog, AnOperationPendingPastTheTimeoutFailsOnceByName) {
  Failures f;
  // 50 ms: the hung operation must be reported, and no earlier than its timeout.
  Watchdog w(0.05, [&](const std::string& m) { f.add(m); });
  auto done = std::make_shared<std::atomic<int>>(1), hung = std::make_shared<std::atomic<int>>(0);
  const auto t0 = std::chrono::steady_clock::now();
  w.watch("ncclReduceScatter", flag_poll(done));
  w.watch("ncclAllGather", flag_poll(hung));
  ASSERT_TRUE(eventually([&] { return !f.get().empty(); }));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
  std::this_thread::sleep_for(20ms);  // a second report would come within a few periods
  const auto m = f.get();
  ASSERT_EQ(m.size(), 1u);
  EXPECT_NE(m[0].find("ncclAllGather made no progress for 0.05 s"), std::string::npos) << m[0];
  EXPECT_TRUE(w.failed());
}

TEST(Watchdog, AFailedOperationAndAFailedHealthCheckAreReported) {
  {
    Failures f;
    Watchdog w(3600.0, [&](const std::string& m) { f.add(m); });
    auto op = std::make_shared<std::atomic<int>>(0);
    w.watch("ncclBroadcast", flag_poll(op));
    *op = 2;
    ASSERT_TRUE(eventually([&] { return !f.get().empty(); }));
    EXPECT_EQ(f.get()[0], "ncclBroadcast failed: the event reported an error");
  }
  {
    Failures f;
    std::atomic<bool> broken{false};
    Watchdog w(
        3600.0, [&](const std::string& m) { f.add(m); },
        [&] { return broken ? std::string("NCCL: remote process exited") : std::string(); });
    auto op = std::make_shared<std::atomic<int>>(0);
    w.watch("ncclAllReduce", flag_poll(op));
    std::this_thread::sleep_for(5ms);
    EXPECT_TRUE(f.get().empty());  // healthy and pending: nothing to report yet
    broken = true;
    ASSERT_TRUE(eventually([&] { return !f.get().empty(); }));
    EXPECT_EQ(f.get()[0], "NCCL: remote process exited");
  }
}

TEST(Watchdog, NoTimeoutWaitsForeverAndStopsCleanlyWithWorkPending) {
  Failures f;
  std::atomic<int> inits{0};
  auto op = std::make_shared<std::atomic<int>>(0);
  {
    Watchdog w(std::numeric_limits<double>::infinity(), [&](const std::string& m) { f.add(m); }, {},
               [&] { ++inits; });
    w.watch("ncclAllReduce", flag_poll(op));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(w.pending(), 1u);
  }  // the destructor must not wait for the pending operation
  EXPECT_TRUE(f.get().empty());
  EXPECT_EQ(inits.load(), 1);
  EXPECT_EQ(op.use_count(), 1);  // the poll (and what it holds) was released
}

// The watchdog's failure handler ends the process from its own thread, where MPI may not be
// called: the message names the rank and the exit code is the one given.
TEST(AbortRank, PrintsTheRankAndExitsWithTheCode) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Watchdog w(0.0, [](const std::string& m) { abort_rank("NCCL: " + m, 3); });
        w.watch("ncclAllGather", [] { return Watchdog::Check{}; });
        std::this_thread::sleep_for(10s);
      },
      testing::ExitedWithCode(3), "rank 0: error: NCCL: ncclAllGather made no progress for 0 s");
}

}  // namespace
}  // namespace lethe
