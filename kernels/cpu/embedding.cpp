#include "kernels/embedding.h"

#include <algorithm>
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
void check_shard(int64_t first, int64_t rows, int64_t vocab, const char* op) {
  LETHE_CHECK(first >= 0 && first + rows <= vocab, op, ": the table's ", rows, " rows from id ", first,
              " do not fit the vocabulary of ", vocab);
}
// The table (or its gradient) [Vr, C] from id `first` of `vocab`, the rows [N, C] of the
// N ids, every id in the vocabulary; returns the ids.
const int32_t* check_lookup(const Tensor& ids, const Tensor& table, const char* table_arg, const Tensor& rows,
                            const char* rows_arg, int64_t first, int64_t vocab, const char* op) {
  check_cpu(ids, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  LETHE_CHECK(table.ndim() == 2, op, ": expected ", table_arg, "[V, C], got ", table.describe());
  check_shard(first, table.dim(0), vocab, op);
  check_shape(rows, {ids.numel(), table.dim(1)}, op, rows_arg);
  check_dtype(rows, table.dtype(), op, rows_arg);
  const int32_t* id = ids.data<int32_t>();
  check_ids(id, ids.numel(), vocab, op);
  return id;
}
}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  embedding_forward_shard(ids, table, 0, table.ndim() == 2 ? table.dim(0) : 0, out);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  embedding_backward_shard(ids, dout, 0, dtable.ndim() == 2 ? dtable.dim(0) : 0, dtable);
}

void embedding_forward_shard(const Tensor& ids, const Tensor& table, int64_t first, int64_t vocab, Tensor& out) {
  const char* op = "embedding_forward";
  if (DeviceOps* d = route(op, {{"ids", &ids}, {"table", &table}, {"out", &out}}))
    return d->embedding_forward(ids, table, first, vocab, out);
  const int32_t* id = check_lookup(ids, table, "table", out, "out", first, vocab, op);
  const int64_t N = ids.numel(), Vr = table.dim(0), C = table.dim(1);
  cpu::dispatch_float(table.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* t = table.data<scalar_t>();
    scalar_t* o = out.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const int64_t r = int64_t(id[i]) - first;
      if (r >= 0 && r < Vr) std::memcpy(o + i * C, t + r * C, sizeof(scalar_t) * C);
      else std::fill(o + i * C, o + (i + 1) * C, scalar_t(0));
    }
  });
}

void embedding_backward_shard(const Tensor& ids, const Tensor& dout, int64_t first, int64_t vocab, Tensor& dtable) {
  const char* op = "embedding_backward";
  if (DeviceOps* d = route(op, {{"ids", &ids}, {"dout", &dout}, {"dtable", &dtable}}))
    return d->embedding_backward(ids, dout, first, vocab, dtable);
  const int32_t* id = check_lookup(ids, dtable, "dtable", dout, "dout", first, vocab, op);
  const int64_t N = ids.numel(), Vr = dtable.dim(0), C = dtable.dim(1);
  cpu::dispatch_float(dtable.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* d = dout.data<scalar_t>();
    scalar_t* g = dtable.data<scalar_t>();
    // Split over channels, not tokens: repeated ids would race, channels never do, and
    // the summation order (positions in order) stays fixed for any thread count.
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t r = int64_t(id[i]) - first;
        if (r >= 0 && r < Vr) g[r * C + c] += d[i * C + c];
      }
  });
}

}  // namespace lethe::ops
