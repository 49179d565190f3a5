#include "kernels/cuda/rope.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
// A block per token (b, t), its threads laid out (pair i, head): the position comes from
// the block index once, cos/sin are read once per thread for every head, and no thread
// divides. Each thread reads both halves before writing, so y may alias x.
__global__ void rotate(const __nv_bfloat16* x, const float* __restrict__ cos, const float* __restrict__ sin,
                       __nv_bfloat16* y, int T, int H, int half, float sign) {
  const int t = int(blockIdx.x % unsigned(T)), i = threadIdx.x;
  const float c = cos[int64_t(t) * half + i], s = sign * sin[int64_t(t) * half + i];
  for (int h = threadIdx.y; h < H; h += blockDim.y) {
    const int64_t o = (int64_t(blockIdx.x) * H + h) * 2 * half + i;
    const float x1 = to_f(x[o]), x2 = to_f(x[o + half]);
    y[o] = to_bf(x1 * c - x2 * s);
    y[o + half] = to_bf(x2 * c + x1 * s);
  }
}
void launch(const bf16* x, const float* cos, const float* sin, bf16* y, int64_t B, int64_t T, int64_t H, int64_t D,
            float sign, Stream s, const char* op) {
  LETHE_CHECK(D > 0 && D % 2 == 0, op, ": head_dim must be even, got ", D);
  LETHE_CHECK(D <= 2048, op, ": head_dim ", D, " exceeds the kernel's 1024 pairs per token");
  LETHE_CHECK(B * T < (int64_t(1) << 31) && H < (int64_t(1) << 31), op, ": ", B * T, " tokens x ", H,
              " heads is beyond the kernel's grid");
  if (B * T * H <= 0) return;
  const int half = int(D / 2);
  const dim3 block(unsigned(half), unsigned(std::max(1, std::min<int>(int(H), 256 / half))));
  rotate<<<unsigned(B * T), block, 0, as_stream(s)>>>(dev(x), cos, sin, dev(y), int(T), int(H), half, sign);
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
