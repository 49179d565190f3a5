#include "kernels/cuda/rmsnorm.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
constexpr int kThreads = 256;

template <bool kResidual>
__global__ void rms_fwd(__nv_bfloat16* x, const __nv_bfloat16* __restrict__ delta,
                        const __nv_bfloat16* __restrict__ w, float eps, __nv_bfloat16* __restrict__ y,
                        float* __restrict__ rstd, int64_t C) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  __nv_bfloat16* xr = x + row * C;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float v;
    if constexpr (kResidual) {
      const __nv_bfloat16 sum = to_bf(to_f(xr[c]) + to_f(delta[row * C + c]));
      xr[c] = sum;
      v = to_f(sum);
    } else {
      v = to_f(xr[c]);
    }
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float r = rsqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  // Each thread rereads only the elements it wrote itself: no barrier needed.
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[row * C + c] = to_bf(to_f(w[c]) * (to_f(xr[c]) * r));
}

// A block walks `rows_per_block` rows and keeps its share of dw in shared memory, so dw
// sees one atomic per channel per block rather than per row.
__global__ void rms_bwd(const __nv_bfloat16* __restrict__ dy, const __nv_bfloat16* __restrict__ x,
                        const __nv_bfloat16* __restrict__ w, const float* __restrict__ rstd,
                        __nv_bfloat16* __restrict__ dx, bool accumulate, float* __restrict__ dw, int64_t N,
                        int64_t C, int64_t rows_per_block) {
  extern __shared__ float dw_part[];
  __shared__ float scratch[32];
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dw_part[c] = 0.f;
  const int64_t r0 = blockIdx.x * rows_per_block, r1 = min(N, r0 + rows_per_block);
  for (int64_t row = r0; row < r1; ++row) {
    const __nv_bfloat16 *g = dy + row * C, *xr = x + row * C;
    const float r = rstd[row];
    float dot = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float gv = to_f(g[c]), xv = to_f(xr[c]);
      dot += to_f(w[c]) * gv * xv;
      dw_part[c] += gv * xv * r;
    }
    dot = block_sum(dot, scratch);
    const float k = r * r * r * dot / float(C);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      float v = r * to_f(w[c]) * to_f(g[c]) - k * to_f(xr[c]);
      if (accumulate) v += to_f(dx[row * C + c]);
      dx[row * C + c] = to_bf(v);
    }
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(dw + c, dw_part[c]);
}
}  // namespace

void rmsnorm_forward(const bf16* x, const bf16* w, float eps, bf16* y, float* rstd, int64_t N, int64_t C,
                     Stream s) {
  if (N <= 0) return;
  rms_fwd<false><<<unsigned(N), kThreads, 0, as_stream(s)>>>(const_cast<__nv_bfloat16*>(dev(x)), nullptr, dev(w),
                                                              eps, dev(y), rstd, C);
  check_launch("rmsnorm_forward");
}

void residual_rmsnorm_forward(bf16* residual, const bf16* delta, const bf16* w, float eps, bf16* y, float* rstd,
                              int64_t N, int64_t C, Stream s) {
  if (N <= 0) return;
  rms_fwd<true><<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(residual), dev(delta), dev(w), eps, dev(y), rstd, C);
  check_launch("residual_rmsnorm_forward");
}

void rmsnorm_backward(const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx, bool accumulate_dx,
                      float* dw, int64_t N, int64_t C, Stream s) {
  if (N <= 0) return;
  const size_t smem = size_t(C) * sizeof(float);
  LETHE_CHECK(smem <= 96 * 1024, "rmsnorm_backward: C=", C, " is wider than the kernel's shared dw buffer");
  if (smem > 48 * 1024)
    LETHE_CUDA_CHECK(cudaFuncSetAttribute(rms_bwd, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                     "rmsnorm_backward");
  // About four blocks per multiprocessor keeps every SM busy; more only adds atomics.
  const int64_t blocks = std::min<int64_t>(N, 528), rows = (N + blocks - 1) / blocks;
  rms_bwd<<<unsigned((N + rows - 1) / rows), kThreads, smem, as_stream(s)>>>(dev(dy), dev(x), dev(w), rstd, dev(dx),
                                                                            accumulate_dx, dw, N, C, rows);
  check_launch("rmsnorm_backward");
}

}  // namespace lethe::cuda
