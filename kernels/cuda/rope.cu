#include "kernels/cuda/rope.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
// One thread per rotated pair; it reads both halves before writing, so y may alias x.
__global__ void rotate(const __nv_bfloat16* x, const float* __restrict__ cos, const float* __restrict__ sin,
                       __nv_bfloat16* y, int64_t T, int64_t H, int64_t half, float sign, int64_t n_pairs) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n_pairs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = p % half, row = p / half;  // row = (b*T + t)*H + h
    const int64_t t = (row / H) % T;
    const int64_t o = row * 2 * half + i;
    const float c = cos[t * half + i], s = sign * sin[t * half + i];
    const float x1 = to_f(x[o]), x2 = to_f(x[o + half]);
    y[o] = to_bf(x1 * c - x2 * s);
    y[o + half] = to_bf(x2 * c + x1 * s);
  }
}
void launch(const bf16* x, const float* cos, const float* sin, bf16* y, int64_t B, int64_t T, int64_t H, int64_t D,
            float sign, Stream s, const char* op) {
  LETHE_CHECK(D > 0 && D % 2 == 0, op, ": head_dim must be even, got ", D);
  const int64_t n = B * T * H * (D / 2);
  if (n <= 0) return;
  rotate<<<grid_for(n, 256), 256, 0, as_stream(s)>>>(dev(x), cos, sin, dev(y), T, H, D / 2, sign, n);
  check_launch(op);
}
}  // namespace

void rope_forward(const bf16* x, const float* cos, const float* sin, bf16* y, int64_t B, int64_t T, int64_t H,
                  int64_t D, Stream s) {
  launch(x, cos, sin, y, B, T, H, D, 1.f, s, "rope_forward");
}
void rope_backward(const bf16* dy, const float* cos, const float* sin, bf16* dx, int64_t B, int64_t T, int64_t H,
                   int64_t D, Stream s) {
  launch(dy, cos, sin, dx, B, T, H, D, -1.f, s, "rope_backward");
}

}  // namespace lethe::cuda
