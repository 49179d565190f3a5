// NCCL backend of Communicator (GPU buffers, on a CUDA stream). Built only with
// LETHE_HAVE_NCCL. One NCCL communicator per group; its unique id travels over the
// matching MPI group, which stays for aborts and for collectives on host tensors.
//
// Ordering: device collectives run on the communicator's own non-blocking stream. Each one
// first waits for everything launched on the compute stream (the legacy default stream,
// where the kernels and copies run), and the compute stream waits for the collective
// through an event: at once for a blocking call, at wait() for an asynchronous one, which
// may overlap the compute launched in between. The host never waits for a collective
// (barrier() aside), so a step has no host synchronisation per collective.
//
// Failures: the communicator is non-blocking (NCCL >= 2.14): every call is polled until
// NCCL has enqueued it; an error there, or no progress within LETHE_NCCL_TIMEOUT_S seconds
// (default 600; 0 waits forever), aborts the communicator (ncclCommAbort) and raises
// lethe::Error naming the collective, which the job-level handler turns into an abort of
// every rank. Once enqueued, a collective is watched to its end by a watchdog thread
// (watchdog.h): one still running the timeout after it could start, or an asynchronous NCCL
// error, ends the process with a message naming it (abort_rank), so a dead or hung peer
// ends the job instead of blocking the next host synchronisation forever. NCCL calls and
// the watchdog's polls take one lock: one thread at a time operates a communicator.
#pragma once
#include <memory>

#include "engine/parallel/communicator.h"

namespace lethe {

// The oldest NCCL with non-blocking communicators (ncclConfig_t.blocking = 0).
constexpr int kMinNcclVersion = 21400;

// Call it after this rank's GPU was selected (ProcessGrid::create does, before anything is
// allocated on it): NCCL cannot serve two ranks on one GPU, which the grid rules out.
// mpi_group: the same ranks over MPI. It carries the unique id, and every collective on
// host (CPU) tensors (scalars such as a loss or a token count) goes to it, so one group
// object serves both kinds of buffer.
std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> mpi_group);

}  // namespace lethe
