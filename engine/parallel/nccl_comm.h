// NCCL backend of Communicator (GPU buffers, on a CUDA stream). Built only with
// LETHE_HAVE_NCCL. One NCCL communicator per group; its unique id travels over the
// matching MPI group, which stays for aborts. Each rank uses the GPU of its local rank.
//
// Failures: every collective is followed by polling ncclCommGetAsyncError while the
// stream works; an error, or no progress within LETHE_NCCL_TIMEOUT_S seconds (default
// 600), aborts the communicator (ncclCommAbort) and raises lethe::Error naming the
// collective, which the job-level handler turns into an abort of every rank.
#pragma once
#include <memory>

#include "engine/parallel/communicator.h"

namespace lethe {

// mpi_group: the same ranks over MPI. It carries the unique id, and every collective on
// host (CPU) tensors (scalars such as a loss or a token count) goes to it, so one group
// object serves both kinds of buffer.
std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> mpi_group);

}  // namespace lethe
