#include "kernels/cuda/swiglu.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
__global__ void swiglu_fwd(const __nv_bfloat16* __restrict__ g, const __nv_bfloat16* __restrict__ u,
                           __nv_bfloat16* __restrict__ a, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_f(g[i]);
    a[i] = to_bf(x / (1.f + __expf(-x)) * to_f(u[i]));
  }
}
__global__ void swiglu_bwd(const __nv_bfloat16* __restrict__ da, const __nv_bfloat16* __restrict__ g,
                           const __nv_bfloat16* __restrict__ u, __nv_bfloat16* __restrict__ dg,
                           __nv_bfloat16* __restrict__ du, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_f(g[i]), up = to_f(u[i]), d = to_f(da[i]);
    const float sig = 1.f / (1.f + __expf(-x));
    du[i] = to_bf(d * x * sig);
    dg[i] = to_bf(d * up * sig * (1.f + x * (1.f - sig)));
  }
}
}  // namespace

void swiglu_forward(const bf16* g, const bf16* u, bf16* a, int64_t n, Stream s) {
  if (n <= 0) return;
  swiglu_fwd<<<grid_for(n, 256), 256, 0, as_stream(s)>>>(dev(g), dev(u), dev(a), n);
  check_launch("swiglu_forward");
}
void swiglu_backward(const bf16* da, const bf16* g, const bf16* u, bf16* dg, bf16* du, int64_t n, Stream s) {
  if (n <= 0) return;
  swiglu_bwd<<<grid_for(n, 256), 256, 0, as_stream(s)>>>(dev(da), dev(g), dev(u), dev(dg), dev(du), n);
  check_launch("swiglu_backward");
}

}  // namespace lethe::cuda
