#include "kernels/cuda/rmsnorm.h"

#include "engine/core/debug_mode.h"
#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
constexpr int kThreads = 256;

// Rows are walked kVec elements per thread per step: 8 (16-byte loads and stores) when C
// is a multiple of 8 and every pointer 16-byte aligned, else 1. Each thread owns the same
// elements in every pass over its row, whatever kVec.

// x, and with kResidual the stream's new value x + delta into `sum` (which may be x: no
// __restrict__ on the two), then y = rmsnorm of it (y may be x as well).
template <bool kResidual, int kVec>
__global__ void rms_fwd(const __nv_bfloat16* x, const __nv_bfloat16* __restrict__ delta, __nv_bfloat16* sum,
                        const __nv_bfloat16* __restrict__ w, float eps, __nv_bfloat16* y,
                        float* __restrict__ rstd, int64_t C) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* xr = kResidual ? sum + row * C : x + row * C;  // what the norm reads
  float ss = 0.f;
  for (int64_t c = threadIdx.x * int64_t(kVec); c < C; c += int64_t(blockDim.x) * kVec) {
    Vec<kVec> xv = ld<kVec>(x + row * C + c);
    if constexpr (kResidual) {
      const Vec<kVec> dv = ld<kVec>(delta + row * C + c);
#pragma unroll
      for (int j = 0; j < kVec; ++j) xv.v[j] = to_bf(to_f(xv.v[j]) + to_f(dv.v[j]));
      st<kVec>(sum + row * C + c, xv);
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) ss += to_f(xv.v[j]) * to_f(xv.v[j]);
  }
  ss = block_sum(ss, scratch);
  const float r = rsqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  // Each thread rereads only the elements it wrote itself: no barrier needed.
  for (int64_t c = threadIdx.x * int64_t(kVec); c < C; c += int64_t(blockDim.x) * kVec) {
    const Vec<kVec> xv = ld<kVec>(xr + c), wv = ld<kVec>(w + c);
    Vec<kVec> yv;
#pragma unroll
    for (int j = 0; j < kVec; ++j) yv.v[j] = to_bf(to_f(wv.v[j]) * (to_f(xv.v[j]) * r));
    st<kVec>(y + row * C + c, yv);
  }
}

// A block walks `rows_per_block` rows and keeps its share of dw in shared memory, so dw
// sees one atomic per channel per block rather than per row.
template <int kVec, bool kDw>
__global__ void rms_bwd(const __nv_bfloat16* __restrict__ dy, const __nv_bfloat16* __restrict__ x,
                        const __nv_bfloat16* __restrict__ w, const float* __restrict__ rstd,
                        __nv_bfloat16* __restrict__ dx, bool accumulate, float* __restrict__ dw, int64_t N,
                        int64_t C, int64_t rows_per_block) {
  extern __shared__ float dw_part[];
  __shared__ float scratch[32];
  if constexpr (kDw) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dw_part[c] = 0.f;
    __syncthreads();  // a thread's dw_part elements below are not the ones it zeroed
  }
  const int64_t r0 = blockIdx.x * rows_per_block, r1 = min(N, r0 + rows_per_block);
  for (int64_t row = r0; row < r1; ++row) {
    const __nv_bfloat16 *g = dy + row * C, *xr = x + row * C;
    const float r = rstd[row];
    float dot = 0.f;
    for (int64_t c = threadIdx.x * int64_t(kVec); c < C; c += int64_t(blockDim.x) * kVec) {
      const Vec<kVec> gv = ld<kVec>(g + c), xv = ld<kVec>(xr + c), wv = ld<kVec>(w + c);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float gf = to_f(gv.v[j]), xf = to_f(xv.v[j]);
        dot += to_f(wv.v[j]) * gf * xf;
        if constexpr (kDw) dw_part[c + j] += gf * xf * r;
      }
    }
    dot = block_sum(dot, scratch);
    const float k = r * r * r * dot / float(C);
    for (int64_t c = threadIdx.x * int64_t(kVec); c < C; c += int64_t(blockDim.x) * kVec) {
      const Vec<kVec> gv = ld<kVec>(g + c), xv = ld<kVec>(xr + c), wv = ld<kVec>(w + c);
      Vec<kVec> acc{};
      if (accumulate) acc = ld<kVec>(dx + row * C + c);
      Vec<kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        float v = r * to_f(wv.v[j]) * to_f(gv.v[j]) - k * to_f(xv.v[j]);
        if (accumulate) v += to_f(acc.v[j]);
        out.v[j] = to_bf(v);
      }
      st<kVec>(dx + row * C + c, out);
    }
  }
  if constexpr (kDw) {
    __syncthreads();  // the channels a thread adds are not all ones it accumulated
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(dw + c, dw_part[c]);
  }
}

// Debug mode: dw without atomics, a thread per channel summing the rows in order, so two
// runs agree bit for bit. Slow: for debug mode.
__global__ void rms_dw_ordered(const __nv_bfloat16* __restrict__ dy, const __nv_bfloat16* __restrict__ x,
                               const float* __restrict__ rstd, float* __restrict__ dw, int64_t N, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int64_t row = 0; row < N; ++row) s += to_f(dy[row * C + c]) * to_f(x[row * C + c]) * rstd[row];
  dw[c] += s;
}

bool vec8(int64_t C, std::initializer_list<const void*> ps) { return C % 8 == 0 && aligned16(ps); }
}  // namespace

void rmsnorm_forward(const bf16* x, const bf16* w, float eps, bf16* y, float* rstd, int64_t N, int64_t C,
                     Stream s) {
  if (N <= 0) return;
  if (vec8(C, {x, w, y}))
    rms_fwd<false, 8><<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(x), nullptr, nullptr, dev(w), eps, dev(y), rstd,
                                                                   C);
  else
    rms_fwd<false, 1><<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(x), nullptr, nullptr, dev(w), eps, dev(y), rstd,
                                                                   C);
  check_launch("rmsnorm_forward");
}

void residual_rmsnorm_forward(const bf16* x, const bf16* delta, bf16* sum, const bf16* w, float eps, bf16* y,
                              float* rstd, int64_t N, int64_t C, Stream s) {
  if (N <= 0) return;
  if (vec8(C, {x, delta, sum, w, y}))
    rms_fwd<true, 8><<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(x), dev(delta), dev(sum), dev(w), eps, dev(y),
                                                                  rstd, C);
  else
    rms_fwd<true, 1><<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(x), dev(delta), dev(sum), dev(w), eps, dev(y),
                                                                  rstd, C);
  check_launch("residual_rmsnorm_forward");
}

void rmsnorm_backward(const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx, bool accumulate_dx,
                      float* dw, int64_t N, int64_t C, Stream s) {
  if (N <= 0) return;
  // Debug mode leaves dw to the ordered kernel: the row kernel then needs no shared dw.
  const bool ordered = debug_mode();
  const size_t smem = ordered ? 0 : size_t(C) * sizeof(float);
  LETHE_CHECK(smem <= 96 * 1024, "rmsnorm_backward: C=", C, " is wider than the kernel's shared dw buffer");
  const bool v8 = vec8(C, {dy, x, w, dx});
  auto* kernel = ordered ? (v8 ? rms_bwd<8, false> : rms_bwd<1, false>) : (v8 ? rms_bwd<8, true> : rms_bwd<1, true>);
  if (smem > 48 * 1024)
    LETHE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                     "rmsnorm_backward");
  // About four blocks per multiprocessor keeps every SM busy; more only adds atomics.
  const int64_t blocks = std::min<int64_t>(N, 528), rows = (N + blocks - 1) / blocks;
  kernel<<<unsigned((N + rows - 1) / rows), kThreads, smem, as_stream(s)>>>(dev(dy), dev(x), dev(w), rstd, dev(dx),
                                                                           accumulate_dx, dw, N, C, rows);
  if (ordered)
    rms_dw_ordered<<<unsigned((C + 31) / 32), 32, 0, as_stream(s)>>>(dev(dy), dev(x), rstd, dw, N, C);
  check_launch("rmsnorm_backward");
}

}  // namespace lethe::cuda
