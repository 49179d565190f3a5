// The residual add on the GPU (kernels/cuda/elementwise.h).
#include "kernels/cuda/elementwise.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
constexpr int kThreads = 256;

// float_to_bf16 of engine/core/bf16.h, not __float2bfloat16_rn: the two agree on every
// number, but CUDA returns one canonical NaN where the CPU keeps the NaN's sign and payload.
__device__ __forceinline__ uint16_t round_to_bf16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float bf16_bits_to_float(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }

// No __restrict__: out may be a or b, and each element is read before it is written by
// the same thread.
__global__ void add_bf16(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = round_to_bf16_bits(bf16_bits_to_float(a[i]) + bf16_bits_to_float(b[i]));
}
__global__ void add_f32(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}
}  // namespace

void add(const bf16* a, const bf16* b, bf16* out, int64_t n, Stream s) {
  if (n <= 0) return;
  add_bf16<<<grid_for(n, kThreads), kThreads, 0, as_stream(s)>>>(reinterpret_cast<const uint16_t*>(a),
                                                                 reinterpret_cast<const uint16_t*>(b),
                                                                 reinterpret_cast<uint16_t*>(out), n);
  check_launch("add");
}

void add(const float* a, const float* b, float* out, int64_t n, Stream s) {
  if (n <= 0) return;
  add_f32<<<grid_for(n, kThreads), kThreads, 0, as_stream(s)>>>(a, b, out, n);
  check_launch("add");
}

}  // namespace lethe::cuda
