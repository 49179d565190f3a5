#include "kernels/cuda/swiglu.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
// Blocks take rows (grid-stride), threads the row's columns: the gate and up halves of a
// row are found without dividing by F. Eight elements per step (16-byte loads and stores)
// when F and every pointer allow it; the elementwise math is the same either way. The
// column index is 64-bit: with a 32-bit one nvcc 13 splits each 16-byte store into four
// 4-byte ones (read from the PTX).

__device__ __forceinline__ float silu_mul(float x, float up) { return x / (1.f + __expf(-x)) * up; }
__device__ __forceinline__ void silu_mul_grad(float x, float up, float d, float& dg, float& du) {
  const float sig = 1.f / (1.f + __expf(-x));
  du = d * x * sig;
  dg = d * up * sig * (1.f + x * (1.f - sig));
}

template <int kVec>
__global__ void swiglu_fwd(const __nv_bfloat16* __restrict__ gu, __nv_bfloat16* __restrict__ a, int64_t rows,
                           int F) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const __nv_bfloat16* g = gu + r * 2 * F;
    const __nv_bfloat16* u = g + F;
    __nv_bfloat16* ar = a + r * F;
    for (int64_t i = threadIdx.x * kVec; i < F; i += int64_t(blockDim.x) * kVec) {
      if constexpr (kVec == 8) {
        const Vec<8> gx = ld<8>(g + i), ux = ld<8>(u + i);
        Vec<8> ax;
#pragma unroll
        for (int j = 0; j < 8; ++j) ax.v[j] = to_bf(silu_mul(to_f(gx.v[j]), to_f(ux.v[j])));
        st<8>(ar + i, ax);
      } else {
        ar[i] = to_bf(silu_mul(to_f(g[i]), to_f(u[i])));
      }
    }
  }
}
template <int kVec>
__global__ void swiglu_bwd(const __nv_bfloat16* __restrict__ da, const __nv_bfloat16* __restrict__ gu,
                           __nv_bfloat16* __restrict__ dgu, int64_t rows, int F) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const __nv_bfloat16* g = gu + r * 2 * F;
    const __nv_bfloat16* u = g + F;
    const __nv_bfloat16* d = da + r * F;
    __nv_bfloat16* dg = dgu + r * 2 * F;
    __nv_bfloat16* du = dg + F;
    for (int64_t i = threadIdx.x * kVec; i < F; i += int64_t(blockDim.x) * kVec) {
      if constexpr (kVec == 8) {
        const Vec<8> dx = ld<8>(d + i), gx = ld<8>(g + i), ux = ld<8>(u + i);
        Vec<8> dgx, dux;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          float x, y;
          silu_mul_grad(to_f(gx.v[j]), to_f(ux.v[j]), to_f(dx.v[j]), x, y);
          dgx.v[j] = to_bf(x);
          dux.v[j] = to_bf(y);
        }
        st<8>(dg + i, dgx);
        st<8>(du + i, dux);
      } else {
        float x, y;
        silu_mul_grad(to_f(g[i]), to_f(u[i]), to_f(d[i]), x, y);
        dg[i] = to_bf(x);
        du[i] = to_bf(y);
      }
    }
  }
}

// Threads per block: the row's steps rounded up to whole warps, at most 256.
int threads_for(int64_t steps) { return int(std::min<int64_t>(256, std::max<int64_t>(32, (steps + 31) / 32 * 32))); }

void check_width(int64_t F, const char* op) {
  LETHE_CHECK(F < (int64_t(1) << 30), op, ": ", F, " gate columns is beyond the kernel's int indexing");
}

}  // namespace

void swiglu_forward(const bf16* gu, bf16* a, int64_t rows, int64_t F, Stream s) {
  check_width(F, "swiglu_forward");
  if (rows <= 0 || F <= 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(rows, 1 << 20));
  if (F % 8 == 0 && aligned16({gu, a}))
    swiglu_fwd<8><<<blocks, threads_for(F / 8), 0, as_stream(s)>>>(dev(gu), dev(a), rows, int(F));
  else
    swiglu_fwd<1><<<blocks, threads_for(F), 0, as_stream(s)>>>(dev(gu), dev(a), rows, int(F));
  check_launch("swiglu_forward");
}
void swiglu_backward(const bf16* da, const bf16* gu, bf16* dgu, int64_t rows, int64_t F, Stream s) {
  check_width(F, "swiglu_backward");
  if (rows <= 0 || F <= 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(rows, 1 << 20));
  if (F % 8 == 0 && aligned16({da, gu, dgu}))
    swiglu_bwd<8><<<blocks, threads_for(F / 8), 0, as_stream(s)>>>(dev(da), dev(gu), dev(dgu), rows, int(F));
  else
    swiglu_bwd<1><<<blocks, threads_for(F), 0, as_stream(s)>>>(dev(da), dev(gu), dev(dgu), rows, int(F));
  check_launch("swiglu_backward");
}

}  // namespace lethe::cuda
