#include "engine/parallel/regions.h"

#include <cstring>

namespace lethe {

void reduce_from_tp_region(const ProcessGrid& g, Tensor& x) {
  if (g.tp() > 1) g.tp_group().all_reduce(x, ReduceOp::sum);
}

void copy_to_tp_region_backward(const ProcessGrid& g, Tensor& dx) {
  if (g.tp() > 1) g.tp_group().all_reduce(dx, ReduceOp::sum);
}

void reduce_replicated_grad(const ProcessGrid& g, Tensor& dw) {
  if (g.tp() > 1) g.tp_group().all_reduce(dw, ReduceOp::sum);
}

void gather_from_tp_region(const ProcessGrid& g, const Tensor& local, Tensor& full) {
  LETHE_CHECK(local.ndim() == 2, "gather_from_tp_region: expected [N, n], got ", local.describe());
  const int64_t N = local.dim(0), n = local.dim(1), tp = g.tp();
  check_shape(full, {N, n * tp}, "gather_from_tp_region", "full");
  Tensor stacked = Tensor::empty({tp, N, n}, local.dtype());
  g.tp_group().all_gather(local, stacked);
  const size_t es = dtype_size(local.dtype()), row = size_t(n) * es;
  const char* src = static_cast<const char*>(stacked.raw());
  char* dst = static_cast<char*>(full.raw());
  for (int64_t r = 0; r < tp; ++r)
    for (int64_t i = 0; i < N; ++i)
      std::memcpy(dst + (size_t(i) * size_t(tp) + size_t(r)) * row, src + (size_t(r) * size_t(N) + size_t(i)) * row, row);
}

void scatter_to_tp_region(const ProcessGrid& g, const Tensor& full, Tensor& local) {
  LETHE_CHECK(local.ndim() == 2, "scatter_to_tp_region: expected [N, n], got ", local.describe());
  const int64_t N = local.dim(0), n = local.dim(1), tp = g.tp(), r = g.tp_rank();
  check_shape(full, {N, n * tp}, "scatter_to_tp_region", "full");
  LETHE_CHECK(full.dtype() == local.dtype(), "scatter_to_tp_region: dtypes differ");
  const size_t es = dtype_size(local.dtype()), row = size_t(n) * es;
  for (int64_t i = 0; i < N; ++i)
    std::memcpy(static_cast<char*>(local.raw()) + size_t(i) * row,
                static_cast<const char*>(full.raw()) + (size_t(i) * size_t(tp) + size_t(r)) * row, row);
}

}  // namespace lethe
