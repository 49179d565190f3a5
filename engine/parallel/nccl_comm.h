// NCCL backend of Communicator (GPU buffers, on a CUDA stream). Built only with
// LETHE_HAVE_NCCL. One NCCL communicator per group; its unique id travels over the
// matching MPI group, which stays for aborts and for collectives on host tensors.
//
// Ordering: device collectives run on the stream given by set_stream (the compute stream,
// so they are ordered with the kernels around them and the host never waits), or, until
// one is set, on the communicator's own non-blocking stream, where a blocking call waits
// for its completion and an asynchronous one records an event that wait() waits for.
// Nothing runs on the legacy default stream, which non-blocking streams do not
// synchronise with.
//
// Failures: the communicator is non-blocking (NCCL >= 2.14): every call is polled until
// NCCL has enqueued it, and every wait polls ncclCommGetAsyncError; an error, or no
// progress within LETHE_NCCL_TIMEOUT_S seconds (default 600), aborts the communicator
// (ncclCommAbort) and raises lethe::Error naming the collective, which the job-level
// handler turns into an abort of every rank.
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
