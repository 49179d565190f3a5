// A graceful stop on SIGTERM, SIGUSR1 or SIGINT: a scheduler's time limit (SLURM sends
// the signal set by `#SBATCH --signal` before its kill), a preemption, or Ctrl-C. The run
// finishes the step it is in, writes a resumable checkpoint, and exits with kExitStopped,
// so `train.resume=true` continues it with nothing lost. A second signal ends the process
// at once (the default action), for when the save itself is what must not wait.
//
// Under a grid every rank must stop after the same step (the checkpoint is collective), and
// a launcher may deliver the signal to the ranks at different moments: agreed_stop_signal
// is a collective that returns what any rank received.
#pragma once

namespace lethe {

class ProcessGrid;

// The exit status of a run stopped by a signal after saving its checkpoint: EX_TEMPFAIL
// ("temporary failure: retry"), since resuming it is exactly a retry.
constexpr int kExitStopped = 75;

// Installs the handlers (idempotent). Only runs that can be resumed install them: without
// checkpoints there is nothing to save, and the default action is the honest one.
void install_stop_handlers();
bool stop_handlers_installed();
// The first signal received by this process (0: none).
int stop_signal_received();
// Collective over the whole grid: a signal some rank received (the largest number if
// several), 0 if none. Call it at the same point of every step on every rank.
int agreed_stop_signal(ProcessGrid& grid);
// "SIGTERM", "SIGUSR1", "SIGINT", or the number.
const char* stop_signal_name(int sig);

// Testing hook: LETHE_TEST_SIGNAL_AT_STEP=k (and optionally LETHE_TEST_SIGNAL_RANK=r, the
// only world rank that signals) makes the process send itself SIGTERM during step k, as
// a scheduler would, so tests stop a run at a known step.
void maybe_raise_test_signal(long step, int world_rank);
// Likewise LETHE_TEST_SIGNAL_BEFORE=<point>: SIGTERM as `lethe unlearn`'s final evaluation
// reaches the named point ("final", "original", "unlearned", "oracle").
void maybe_raise_test_signal_before(const char* point, int world_rank);

}  // namespace lethe
