#include "kernels/cuda/hidden_loss.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cross_entropy.h"

namespace lethe::cuda {
namespace {

constexpr int kThreads = 256;

// One block per row. The differences are formed in double, as the CPU twin forms them.
__global__ void hidden_mse_rows(const __nv_bfloat16* __restrict__ h, const __nv_bfloat16* __restrict__ target,
                                const double* __restrict__ steer, const int32_t* __restrict__ targets,
                                double grad_scale, double denom, float* __restrict__ dh, double* __restrict__ row_sq,
                                int64_t C) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const bool skip = targets[row] == kIgnoreIndex;
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t k = row * C + c;
    if (skip) {
      dh[k] = 0.f;
      continue;
    }
    const double d = double(to_f(h[k])) - (target ? double(to_f(target[k])) : steer[c]);
    s += d * d;
    dh[k] = float(grad_scale * 2 * d / denom);
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) row_sq[row] = s;
}

__global__ void add_rows(const double* __restrict__ row_sq, double* loss, int64_t N) {
  __shared__ double scratch[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) s += row_sq[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *loss += s;
}

}  // namespace

void hidden_mse(const bf16* h, const bf16* target, const double* steer, const int32_t* targets, double grad_scale,
                double denom, float* dh, double* row_sq, double* loss, int64_t N, int64_t C, Stream s) {
  if (N <= 0) return;
  hidden_mse_rows<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(h), target ? dev(target) : nullptr, steer, targets,
                                                              grad_scale, denom, dh, row_sq, C);
  check_launch("hidden_mse");
  add_rows<<<1, 1024, 0, as_stream(s)>>>(row_sq, loss, N);
  check_launch("hidden_mse (row sums)");
}

}  // namespace lethe::cuda
