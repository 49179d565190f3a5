#include "kernels/cuda/swiglu.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
// Eight elements per step (16-byte loads and stores) when every pointer allows it; the
// elementwise math is the same either way.

__device__ __forceinline__ float silu_mul(float x, float up) { return x / (1.f + __expf(-x)) * up; }
__device__ __forceinline__ void silu_mul_grad(float x, float up, float d, float& dg, float& du) {
  const float sig = 1.f / (1.f + __expf(-x));
  du = d * x * sig;
  dg = d * up * sig * (1.f + x * (1.f - sig));
}

template <int kVec>
// No __restrict__: a may be g or u (each element is read by the thread that writes it).
__global__ void swiglu_fwd(const __nv_bfloat16* g, const __nv_bfloat16* u, __nv_bfloat16* a, int64_t n) {
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    if constexpr (kVec == 8) {
      const Vec<8> gx = ld<8>(g + i), ux = ld<8>(u + i);
      Vec<8> ax;
#pragma unroll
      for (int j = 0; j < 8; ++j) ax.v[j] = to_bf(silu_mul(to_f(gx.v[j]), to_f(ux.v[j])));
      st<8>(a + i, ax);
    } else {
      a[i] = to_bf(silu_mul(to_f(g[i]), to_f(u[i])));
    }
  }
}
template <int kVec>
__global__ void swiglu_bwd(const __nv_bfloat16* __restrict__ da, const __nv_bfloat16* __restrict__ g,
                           const __nv_bfloat16* __restrict__ u, __nv_bfloat16* __restrict__ dg,
                           __nv_bfloat16* __restrict__ du, int64_t n) {
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    if constexpr (kVec == 8) {
      const Vec<8> dx = ld<8>(da + i), gx = ld<8>(g + i), ux = ld<8>(u + i);
      Vec<8> dgx, dux;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float a, b;
        silu_mul_grad(to_f(gx.v[j]), to_f(ux.v[j]), to_f(dx.v[j]), a, b);
        dgx.v[j] = to_bf(a);
        dux.v[j] = to_bf(b);
      }
      st<8>(dg + i, dgx);
      st<8>(du + i, dux);
    } else {
      float a, b;
      silu_mul_grad(to_f(g[i]), to_f(u[i]), to_f(da[i]), a, b);
      dg[i] = to_bf(a);
      du[i] = to_bf(b);
    }
  }
}

}  // namespace

void swiglu_forward(const bf16* g, const bf16* u, bf16* a, int64_t n, Stream s) {
  if (n <= 0) return;
  if (n % 8 == 0 && aligned16({g, u, a}))
    swiglu_fwd<8><<<grid_for(n / 8, 256), 256, 0, as_stream(s)>>>(dev(g), dev(u), dev(a), n);
  else
    swiglu_fwd<1><<<grid_for(n, 256), 256, 0, as_stream(s)>>>(dev(g), dev(u), dev(a), n);
  check_launch("swiglu_forward");
}
void swiglu_backward(const bf16* da, const bf16* g, const bf16* u, bf16* dg, bf16* du, int64_t n, Stream s) {
  if (n <= 0) return;
  if (n % 8 == 0 && aligned16({da, g, u, dg, du}))
    swiglu_bwd<8><<<grid_for(n / 8, 256), 256, 0, as_stream(s)>>>(dev(da), dev(g), dev(u), dev(dg), dev(du), n);
  else
    swiglu_bwd<1><<<grid_for(n, 256), 256, 0, as_stream(s)>>>(dev(da), dev(g), dev(u), dev(dg), dev(du), n);
  check_launch("swiglu_backward");
}

}  // namespace lethe::cuda
