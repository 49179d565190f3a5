#include "engine/parallel/launcher_env.h"

#include <cstdlib>

namespace lethe {
namespace {
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == 0 && x >= 0) ? int(x) : fallback;
}
bool has(const char* name) { return std::getenv(name) != nullptr; }
}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo li;
  if (has("OMPI_COMM_WORLD_SIZE")) {
    li = {true, env_int("OMPI_COMM_WORLD_SIZE", 1), env_int("OMPI_COMM_WORLD_RANK", 0), "openmpi"};
  } else if (has("PMIX_RANK")) {
    // srun --mpi=pmix exports the rank; the size comes from SLURM (PMIx keeps it in its store).
    li = {true, env_int("SLURM_NTASKS", env_int("PMIX_SIZE", 1)), env_int("PMIX_RANK", 0), "pmix"};
  } else if (has("PMI_RANK") || has("PMI_SIZE")) {
    li = {true, env_int("PMI_SIZE", 1), env_int("PMI_RANK", 0), "pmi"};
  }
  return li;
}

bool mpi_compiled() {
#ifdef LETHE_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool nccl_compiled() {
#ifdef LETHE_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

}  // namespace lethe
