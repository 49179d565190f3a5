#include "kernels/cuda/cast.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
__global__ void f32_to_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = to_bf(x[i]);
}
__global__ void bf16_to_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = to_f(x[i]);
}
}  // namespace

void cast_f32_to_bf16(const float* x, bf16* y, int64_t n, Stream s) {
  if (n <= 0) return;
  f32_to_bf16<<<grid_for(n, 256), 256, 0, as_stream(s)>>>(x, dev(y), n);
  check_launch("cast_f32_to_bf16");
}
void cast_bf16_to_f32(const bf16* x, float* y, int64_t n, Stream s) {
  if (n <= 0) return;
  bf16_to_f32<<<grid_for(n, 256), 256, 0, as_stream(s)>>>(dev(x), y, n);
  check_launch("cast_bf16_to_f32");
}

}  // namespace lethe::cuda
