// Internal to kernels/cuda: error checks, bf16 conversions, warp and block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "engine/core/error.h"
#include "kernels/cuda/runtime.h"

#define LETHE_CUDA_CHECK(expr, op)                                                        \
  do {                                                                                   \
    cudaError_t err_ = (expr);                                                           \
    if (err_ != cudaSuccess) LETHE_FAIL(op, ": ", cudaGetErrorString(err_), " (", #expr, ")"); \
  } while (0)

namespace lethe::cuda {

inline cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

// lethe::bf16 and __nv_bfloat16 are both the upper half of an IEEE float.
inline __nv_bfloat16* dev(bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
inline const __nv_bfloat16* dev(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __nv_bfloat16 to_bf(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block, result in every thread. `scratch` holds 32 values; the trailing
// barrier lets the caller reuse it at once. Fixed order: deterministic.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = lane < nw ? scratch[lane] : T(0);
  r = warp_sum(r);
  __syncthreads();
  return r;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nw ? scratch[lane] : -INFINITY;
  r = warp_max(r);
  __syncthreads();
  return r;
}

// Online softmax state (max, sum of exp(x - max)); merging two is associative. A NaN
// anywhere makes the state NaN, as the CPU's sum over the row does (fmaxf alone would
// drop it: fmaxf(-inf, NaN) is -inf).
struct MaxSum {
  float m = -INFINITY, s = 0.f;
};
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  if (isnan(a.m) || isnan(b.m)) return {NAN, NAN};
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}
__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum w{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = merge(v, w);
  }
  return v;
}
// scratch holds 64 floats.
__device__ __forceinline__ MaxSum block_merge(MaxSum v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_merge(v);
  if (lane == 0) {
    scratch[warp] = v.m;
    scratch[32 + warp] = v.s;
  }
  __syncthreads();
  MaxSum r = lane < nw ? MaxSum{scratch[lane], scratch[32 + lane]} : MaxSum{};
  r = warp_merge(r);
  __syncthreads();
  return r;
}

// kVec bf16 values loaded and stored together: 8 is one 16-byte access (the pointer must
// be 16-byte aligned), 1 a plain one; row kernels pick 8 when every pointer and the row
// length allow it (aligned16).
// Aligned like the access it stands for, so the reinterpretation below stays a legal
// 16-byte access even where the value lives in memory (a -G build, a spill).
template <int kVec>
struct alignas(kVec == 8 ? 16 : alignof(__nv_bfloat16)) Vec {
  __nv_bfloat16 v[kVec];
};
template <int kVec>
__device__ __forceinline__ Vec<kVec> ld(const __nv_bfloat16* p) {
  if constexpr (kVec == 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    return *reinterpret_cast<const Vec<8>*>(&raw);
  } else {
    return Vec<kVec>{{*p}};
  }
}
template <int kVec>
__device__ __forceinline__ void st(__nv_bfloat16* p, const Vec<kVec>& x) {
  if constexpr (kVec == 8) *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&x);
  else *p = x.v[0];
}
// Every non-null pointer 16-byte aligned.
inline bool aligned16(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (p && reinterpret_cast<uintptr_t>(p) % 16) return false;
  return true;
}

inline unsigned grid_for(int64_t n, int threads, int64_t cap = 1 << 16) {
  int64_t g = (n + threads - 1) / threads;
  if (g > cap) g = cap;
  return unsigned(g < 1 ? 1 : g);
}

}  // namespace lethe::cuda
