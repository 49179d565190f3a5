#include "kernels/cuda/rope.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
// A block per token (b, t), its threads laid out (pair i, head): the position comes from
// the block index once, cos/sin are read once per thread for every head, and no thread
// divides. Tokens lie xs (x) and ys (y) elements apart: H*D for a [B, T, H, D] tensor, the
// fused projection's row width for heads inside its [N, (H + 2 KV) D] output. Each thread
// reads both halves before writing, so y may alias x.
__global__ void rotate(const __nv_bfloat16* x, int64_t xs, const float* __restrict__ cos,
                       const float* __restrict__ sin, __nv_bfloat16* y, int64_t ys, int T, int H, int half,
                       float sign) {
  const int t = int(blockIdx.x % unsigned(T)), i = threadIdx.x;
  const float c = cos[int64_t(t) * half + i], s = sign * sin[int64_t(t) * half + i];
  const __nv_bfloat16* xt = x + int64_t(blockIdx.x) * xs;
  __nv_bfloat16* yt = y + int64_t(blockIdx.x) * ys;
  for (int h = threadIdx.y; h < H; h += blockDim.y) {
    const int o = h * 2 * half + i;
    const float x1 = to_f(xt[o]), x2 = to_f(xt[o + half]);
    yt[o] = to_bf(x1 * c - x2 * s);
    yt[o + half] = to_bf(x2 * c + x1 * s);
  }
}
void launch(const bf16* x, int64_t xs, const float* cos, const float* sin, bf16* y, int64_t ys, int64_t B, int64_t T,
            int64_t H, int64_t D, float sign, Stream s, const char* op) {
  LETHE_CHECK(D > 0 && D % 2 == 0, op, ": head_dim must be even, got ", D);
  LETHE_CHECK(D <= 2048, op, ": head_dim ", D, " exceeds the kernel's 1024 pairs per token");
  LETHE_CHECK(B * T < (int64_t(1) << 31) && H * D < (int64_t(1) << 31), op, ": ", B * T, " tokens x ", H,
              " heads is beyond the kernel's grid");
  if (B * T * H <= 0) return;
  const int half = int(D / 2);
  const dim3 block(unsigned(half), unsigned(std::max(1, std::min<int>(int(H), 256 / half))));
  rotate<<<unsigned(B * T), block, 0, as_stream(s)>>>(dev(x), xs, cos, sin, dev(y), ys, int(T), int(H), half, sign);
  check_launch(op);
}
}  // namespace

void rope_forward(const bf16* x, const float* cos, const float* sin, bf16* y, int64_t B, int64_t T, int64_t H,
                  int64_t D, Stream s) {
  launch(x, H * D, cos, sin, y, H * D, B, T, H, D, 1.f, s, "rope_forward");
}
void rope_backward(const bf16* dy, const float* cos, const float* sin, bf16* dx, int64_t B, int64_t T, int64_t H,
                   int64_t D, Stream s) {
  launch(dy, H * D, cos, sin, dx, H * D, B, T, H, D, -1.f, s, "rope_backward");
}

void qkv_split_rope(const bf16* qkv, const float* cos, const float* sin, bf16* q, bf16* k, bf16* v, int64_t B,
                    int64_t T, int64_t H, int64_t KV, int64_t D, Stream s) {
  const int64_t W = (H + 2 * KV) * D;
  launch(qkv, W, cos, sin, q, H * D, B, T, H, D, 1.f, s, "qkv_split_rope (q)");
  launch(qkv + H * D, W, cos, sin, k, KV * D, B, T, KV, D, 1.f, s, "qkv_split_rope (k)");
  copy_device_2d(v, size_t(KV * D) * 2, qkv + (H + KV) * D, size_t(W) * 2, size_t(KV * D) * 2, size_t(B * T), s);
}
void qkv_merge_rope_backward(const bf16* dq, const bf16* dk, const bf16* dv, const float* cos, const float* sin,
                             bf16* dqkv, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, Stream s) {
  const int64_t W = (H + 2 * KV) * D;
  launch(dq, H * D, cos, sin, dqkv, W, B, T, H, D, -1.f, s, "qkv_merge_rope_backward (dq)");
  launch(dk, KV * D, cos, sin, dqkv + H * D, W, B, T, KV, D, -1.f, s, "qkv_merge_rope_backward (dk)");
  copy_device_2d(dqkv + (H + KV) * D, size_t(W) * 2, dv, size_t(KV * D) * 2, size_t(KV * D) * 2, size_t(B * T), s);
}

}  // namespace lethe::cuda
