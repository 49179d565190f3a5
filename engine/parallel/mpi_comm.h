// MPI backend of Communicator (CPU buffers). Only compiled with LETHE_HAVE_MPI; callers
// check mpi_compiled() first. No MPI header leaks out of this file.
#pragma once
#include <memory>

#include "engine/parallel/communicator.h"

namespace lethe {

// Initialises MPI once (later calls return at once) and finalises it at process exit.
void mpi_init_once();
bool mpi_is_initialized();
// MPI_COMM_WORLD, or a sub-group of an MPI communicator (MPI_Comm_split semantics:
// ranks with the same color form a group, ordered by key).
std::unique_ptr<Communicator> mpi_world();
std::unique_ptr<Communicator> mpi_split(const Communicator& parent, int color, int key);
// This rank's place on its node: the ranks sharing its memory (MPI_Comm_split_type with
// MPI_COMM_TYPE_SHARED), whatever the launcher's environment says.
struct NodeRank {
  int local_rank = 0, local_size = 1;
};
NodeRank mpi_node_rank();
// Ends every rank of the job (MPI_Abort on MPI_COMM_WORLD).
[[noreturn]] void mpi_abort_world(int code);

}  // namespace lethe
