#include "engine/parallel/failure.h"

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "engine/core/error.h"
#include "engine/parallel/launcher_env.h"
#ifdef LETHE_HAVE_MPI
#include <mpi.h>

#include "engine/parallel/mpi_comm.h"
#endif

namespace lethe {

bool in_multi_rank_job() {
#ifdef LETHE_HAVE_MPI
  if (!mpi_is_initialized()) return false;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size > 1;
#else
  return false;
#endif
}

namespace {
// One write per message so ranks' lines do not interleave mid-line.
void print_rank_error(int rank, const std::string& message) {
  const std::string line = "rank " + std::to_string(rank) + ": error: " + message + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
  std::fflush(stdout);
}
}  // namespace

void abort_rank(const std::string& message, int code) {
  print_rank_error(detect_launch().rank, message);  // the launcher's rank: no MPI call here
  std::_Exit(code);
}

void abort_job(const std::string& message, int code) {
  int rank = detect_launch().rank;
#ifdef LETHE_HAVE_MPI
  if (mpi_is_initialized()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
#endif
  print_rank_error(rank, message);
#ifdef LETHE_HAVE_MPI
  if (in_multi_rank_job()) mpi_abort_world(code);
#endif
  std::_Exit(code);
}

int run_or_abort_job(const std::function<int()>& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    if (in_multi_rank_job()) abort_job(e.what());
    throw;
  } catch (const std::exception& e) {
    if (in_multi_rank_job()) abort_job(std::string("internal error: ") + e.what());
    throw;
  }
}

}  // namespace lethe
