// main() of every CPU test binary: the GEMM kernel is chosen as `lethe` chooses it
// (kernels/cpu/blas_kernel.h), so tests run the code path users run, then GoogleTest.
#include <gtest/gtest.h>

#include <cstdio>
#include <exception>

#include "kernels/cpu/blas_kernel.h"

int main(int argc, char** argv) {
  try {
    lethe::select_blas_kernel(argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
