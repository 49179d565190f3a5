// Helpers for the parallel tests: grids over the MPI world, and the block of a whole
// tensor that a tp rank holds.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "engine/model/param_set.h"
#include "engine/parallel/grid.h"
#include "engine/parallel/mpi_comm.h"

namespace lethe::test {

inline std::shared_ptr<Communicator> mpi_world_shared() {
  static std::shared_ptr<Communicator> w(mpi_world());
  return w;
}

// Every (tp, dp) with tp * dp equal to the world size.
inline std::vector<std::pair<int, int>> layouts() {
  const int n = mpi_world_shared()->size();
  std::vector<std::pair<int, int>> out;
  for (int tp = 1; tp <= n; ++tp)
    if (n % tp == 0) out.push_back({tp, n / tp});
  return out;
}

// Columns [c0, c0 + n) of a [R, C] tensor.
inline Tensor columns(const Tensor& full, int64_t c0, int64_t n) {
  const int64_t R = full.dim(0), C = full.dim(1);
  Tensor out = Tensor::empty({R, n}, full.dtype());
  const size_t es = dtype_size(full.dtype());
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(static_cast<char*>(out.raw()) + size_t(r * n) * es,
                static_cast<const char*>(full.raw()) + size_t(r * C + c0) * es, size_t(n) * es);
  return out;
}

// The block of `full` that spec describes (the whole tensor when not sharded).
inline Tensor block_of(const Tensor& full, const ParamSpec& spec) {
  if (!spec.sharded()) return full;
  if (spec.shard_dim == 0) return full.slice_rows(spec.shard_offset, spec.shard_offset + spec.shape[0]).clone();
  return columns(full, spec.shard_offset, spec.shape[1]);
}

}  // namespace lethe::test
