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
__global__ void fill_kernel(float* x, int64_t n, float v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = v;
}
__global__ void uniform_kernel(float* x, int64_t n, float stddev, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + uint64_t(i) * 0x9E3779B97F4A7C15ull;  // splitmix64 of the index
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = float(z >> 40) * (1.f / 16777216.f);  // [0, 1), 24 bits
    x[i] = stddev * 3.4641016f * (u - 0.5f);               // sqrt(12) * (u - 1/2) has unit variance
  }
}
}  // namespace

void fill(float* x, int64_t n, float value, Stream s) {
  if (n <= 0) return;
  fill_kernel<<<grid_for(n, 256, 4096), 256, 0, as_stream(s)>>>(x, n, value);
  check_launch("fill");
}
void fill_uniform(float* x, int64_t n, float stddev, uint64_t seed, Stream s) {
  if (n <= 0) return;
  uniform_kernel<<<grid_for(n, 256, 4096), 256, 0, as_stream(s)>>>(x, n, stddev, seed);
  check_launch("fill_uniform");
}

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
