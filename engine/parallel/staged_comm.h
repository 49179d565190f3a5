// Device tensors over a host communicator: each collective copies its device buffers to
// host memory, runs the host group's collective (MPI), and copies the result back. It is
// what runs when NCCL cannot: several ranks sharing one GPU (NCCL refuses two ranks on a
// device, and a machine with one GPU is what tests usually get), or a build without NCCL.
// Slow by design (two host copies per collective) and exact: the reductions are MPI's.
// Host tensors go to the host group unchanged.
#pragma once
#include <memory>

#include "engine/parallel/communicator.h"

namespace lethe {

std::unique_ptr<Communicator> make_host_staged_communicator(std::shared_ptr<Communicator> host);

}  // namespace lethe
