#include "kernels/embedding.h"

#include <cstring>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {
namespace {
void check_ids(const int32_t* ids, int64_t N, int64_t V, const char* op) {
  for (int64_t i = 0; i < N; ++i)
    LETHE_CHECK(ids[i] >= 0 && ids[i] < V, op, ": token id ", ids[i], " at position ", i,
                " is outside the vocabulary [0, ", V, ")");
}
}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  if (DeviceOps* d = route("embedding_forward", {{"ids", &ids}, {"table", &table}, {"out", &out}}))
    return d->embedding_forward(ids, table, out);
  check_cpu(ids, "embedding_forward", "ids");
  check_dtype(ids, DType::i32, "embedding_forward", "ids");
  const int64_t N = ids.numel(), V = table.dim(0), C = table.dim(1);
  check_shape(out, {N, C}, "embedding_forward", "out");
  check_dtype(out, table.dtype(), "embedding_forward", "out");
  const int32_t* id = ids.data<int32_t>();
  check_ids(id, N, V, "embedding_forward");
  cpu::dispatch_float(table.dtype(), "embedding_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* t = table.data<scalar_t>();
    scalar_t* o = out.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) std::memcpy(o + i * C, t + int64_t(id[i]) * C, sizeof(scalar_t) * C);
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  if (DeviceOps* d = route("embedding_backward", {{"ids", &ids}, {"dout", &dout}, {"dtable", &dtable}}))
    return d->embedding_backward(ids, dout, dtable);
  check_cpu(ids, "embedding_backward", "ids");
  check_dtype(ids, DType::i32, "embedding_backward", "ids");
  const int64_t N = ids.numel(), V = dtable.dim(0), C = dtable.dim(1);
  check_shape(dout, {N, C}, "embedding_backward", "dout");
  const int32_t* id = ids.data<int32_t>();
  check_ids(id, N, V, "embedding_backward");
  cpu::dispatch_float(dtable.dtype(), "embedding_backward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* d = dout.data<scalar_t>();
    scalar_t* g = dtable.data<scalar_t>();
    // Split over channels, not tokens: repeated ids would race, channels never do, and
    // the summation order stays fixed for any thread count.
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < N; ++i) g[int64_t(id[i]) * C + c] += d[i * C + c];
  });
}

}  // namespace lethe::ops
