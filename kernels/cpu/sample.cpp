#include "kernels/sample.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

void inverse_cdf_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& target, int64_t first,
                       Tensor& arg) {
  const char* op = "inverse_cdf_shard";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"rowmax", &rowmax}, {"target", &target}, {"arg", &arg}}))
    return d->inverse_cdf_shard(logits, rowmax, target, first, arg);
  check_cpu(logits, op, "logits");
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  const int64_t N = logits.dim(0), Vr = logits.dim(1);
  check_shape(rowmax, {N}, op, "rowmax");
  check_dtype(rowmax, logits.dtype(), op, "rowmax");
  check_shape(target, {N}, op, "target");
  check_dtype(target, DType::f64, op, "target");
  check_shape(arg, {N}, op, "arg");
  check_dtype(arg, DType::i32, op, "arg");
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = logits.data<scalar_t>(), *M = rowmax.data<scalar_t>();
    const double* t = target.data<double>();
    int32_t* A = arg.data<int32_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      if (!(t[i] >= 0)) {
        A[i] = -1;
        continue;
      }
      const double m = double(M[i]);
      double acc = 0;
      int64_t j = 0;
      for (; j < Vr; ++j)
        if ((acc += std::exp(double(X[i * Vr + j]) - m)) > t[i]) break;
      A[i] = int32_t(first + std::min(j, Vr - 1));
    }
  });
}

void topk_shard(const Tensor& logits, int64_t first, Tensor& values, Tensor& ids) {
  const char* op = "topk_shard";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"values", &values}, {"ids", &ids}}))
    return d->topk_shard(logits, first, values, ids);
  check_cpu(logits, op, "logits");
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  LETHE_CHECK(values.ndim() == 2 && values.dim(0) == logits.dim(0) && values.dim(1) >= 1, op,
              ": expected values[N, K] with N = ", logits.dim(0), " and K >= 1, got ", values.describe());
  const int64_t N = logits.dim(0), Vr = logits.dim(1), K = values.dim(1);
  check_dtype(values, logits.dtype(), op, "values");
  check_shape(ids, {N, K}, op, "ids");
  check_dtype(ids, DType::i32, op, "ids");
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* X = logits.data<scalar_t>();
    scalar_t* Vo = values.data<scalar_t>();
    int32_t* Io = ids.data<int32_t>();
    const int64_t n = std::min(K, Vr);
#pragma omp parallel
    {
      std::vector<int32_t> idx(static_cast<size_t>(Vr));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N; ++i) {
        const scalar_t* x = X + i * Vr;
        auto key = [x](int32_t j) { return std::isnan(x[j]) ? -std::numeric_limits<scalar_t>::infinity() : x[j]; };
        auto before = [&](int32_t a, int32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); };
        std::iota(idx.begin(), idx.end(), 0);
        std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), before);
        for (int64_t r = 0; r < K; ++r) {
          const bool real = r < n;
          Vo[i * K + r] = real ? key(idx[size_t(r)]) : -std::numeric_limits<scalar_t>::infinity();
          Io[i * K + r] = real ? int32_t(first + idx[size_t(r)]) : -1;
        }
      }
    }
  });
}

}  // namespace lethe::ops
