#include "engine/parallel/stop_request.h"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <string>

#include "engine/parallel/grid.h"

namespace lethe {
namespace {

volatile std::sig_atomic_t g_signal = 0;
std::atomic<bool> g_installed{false};
constexpr int kSignals[] = {SIGTERM, SIGUSR1, SIGINT};

extern "C" void on_stop_signal(int sig) {
  if (g_signal == 0) g_signal = sig;
  // The next one of any of them takes the default action: a user who presses Ctrl-C twice,
  // or a scheduler that escalates, is not kept waiting for the save.
  for (int s : kSignals) std::signal(s, SIG_DFL);
}

}  // namespace

void install_stop_handlers() {
  if (g_installed.exchange(true)) return;
  for (int s : kSignals) {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // a signal during a write or a collective must not fail it
    sigaction(s, &sa, nullptr);
  }
}

bool stop_handlers_installed() { return g_installed.load(); }

int stop_signal_received() { return int(g_signal); }

int agreed_stop_signal(ProcessGrid& grid) {
  const int mine = stop_signal_received();
  if (!grid.parallel()) return mine;
  // The largest signal number any rank saw: every rank gets the same answer.
  return int(grid.world().all_reduce(int64_t(mine), ReduceOp::max));
}

const char* stop_signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    default: return "a signal";
  }
}

namespace {
void raise_on_test_rank(int world_rank) {
  const char* rank = std::getenv("LETHE_TEST_SIGNAL_RANK");
  if (rank && std::atoi(rank) != world_rank) return;
  std::raise(SIGTERM);
}
}  // namespace

void maybe_raise_test_signal(long step, int world_rank) {
  const char* at = std::getenv("LETHE_TEST_SIGNAL_AT_STEP");
  if (at && std::atol(at) == step) raise_on_test_rank(world_rank);
}

void maybe_raise_test_signal_before(const char* point, int world_rank) {
  const char* at = std::getenv("LETHE_TEST_SIGNAL_BEFORE");
  if (at && std::string(at) == point) raise_on_test_rank(world_rank);
}

}  // namespace lethe
