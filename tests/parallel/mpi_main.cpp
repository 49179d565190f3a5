// main() for tests run under mpirun: every rank runs every test; the job fails when any
// rank fails. A rank that stops early would leave the others in a collective, so the
// ctest TIMEOUT bounds every test as well.
#include <gtest/gtest.h>

#include <cstdio>
#include <exception>

#include "engine/parallel/mpi_comm.h"
#include "kernels/cpu/blas_kernel.h"

int main(int argc, char** argv) {
  try {
    lethe::select_blas_kernel(argv);  // before MPI starts: it may re-execute the process
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  auto world = lethe::mpi_world();  // initialises MPI
  const int rc = RUN_ALL_TESTS();
  return int(world->all_reduce(int64_t(rc), lethe::ReduceOp::max));
}
