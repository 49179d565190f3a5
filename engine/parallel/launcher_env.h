// How this process was started, read from the environment before any MPI call: mpirun
// (Open MPI, MPICH/Hydra) and srun --mpi=pmix/pmi2 export their rank and size. A plain
// `lethe train` sees none of them and runs without touching MPI.
#pragma once
#include <string>

namespace lethe {

struct LaunchInfo {
  bool under_mpi = false;  // started by an MPI-aware launcher
  int world_size = 1;      // ranks the launcher started (1 when unknown)
  int rank = 0;
  std::string launcher;    // "openmpi", "pmix", "pmi", or "" for a plain process
};

LaunchInfo detect_launch();

// Built with an MPI library (LETHE_HAVE_MPI) / with NCCL.
bool mpi_compiled();
bool nccl_compiled();

}  // namespace lethe
