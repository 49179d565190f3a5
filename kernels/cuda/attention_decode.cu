// Decode attention on the GPU (kernels/cuda/attention_decode.h). One block of 4 warps per
// (sequence, query head): a decode step is one query row, bound by reading the cache, so the
// block streams the n cached keys and values once, a tile of 64 at a time; no tensor cores.
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
constexpr int kThreads = 128, kWarps = kThreads / 32, kTile = kDecodeKeyTile, kMaxD = 256;

__global__ void __launch_bounds__(kThreads)
    decode_kernel(const __nv_bfloat16* q, const __nv_bfloat16* __restrict__ K,
                  const __nv_bfloat16* __restrict__ V, int n, float scale_log2, __nv_bfloat16* o, int S,
                  int H, int KV, int D) {
  __shared__ float qs[kMaxD];
  __shared__ float p[kTile];
  __shared__ float stat[2];  // the tile's max, and the rescale of what came before
  const int b = blockIdx.x / H, h = blockIdx.x % H, kv = h / (H / KV);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t ks = size_t(KV) * D;
  const __nv_bfloat16* Kb = K + size_t(b) * S * ks + size_t(kv) * D;
  const __nv_bfloat16* Vb = V + size_t(b) * S * ks + size_t(kv) * D;
  for (int d = threadIdx.x; d < D; d += kThreads) qs[d] = to_f(q[(size_t(b) * H + h) * D + d]);
  // Output dims d = threadIdx.x + kThreads * i, i < 2 (D <= 256).
  float acc[kMaxD / kThreads] = {0.f, 0.f};
  float m_run = -INFINITY, l = 0.f;
  __syncthreads();
  for (int j0 = 0; j0 < n; j0 += kTile) {
    const int j1 = min(n, j0 + kTile);
    // Scores: each warp takes every kWarps-th key of the tile, its lanes split D.
    for (int j = j0 + warp; j < j1; j += kWarps) {
      const __nv_bfloat16* kr = Kb + size_t(j) * ks;
      float s = 0.f;
      for (int d = lane; d < D; d += 32) s += qs[d] * to_f(kr[d]);
      s = warp_sum(s);
      if (lane == 0) p[j - j0] = s * scale_log2;
    }
    __syncthreads();
    if (warp == 0) {
      float mx = m_run;
      for (int j = lane; j < j1 - j0; j += 32) mx = fmaxf(mx, p[j]);
      mx = warp_max(mx);  // finite: the tile holds at least one key
      float psum = 0.f;
      for (int j = lane; j < j1 - j0; j += 32) {
        const float e = exp2f(p[j] - mx);
        psum += e;
        p[j] = to_f(to_bf(e));  // P is rounded to bf16 before it weights V, as in the forward
      }
      psum = warp_sum(psum);
      if (lane == 0) {
        const float alpha = exp2f(m_run - mx);  // 0 for the first tile (m_run = -inf)
        l = l * alpha + psum;
        stat[0] = mx;
        stat[1] = alpha;
      }
    }
    __syncthreads();
    const float alpha = stat[1];
    m_run = stat[0];
#pragma unroll
    for (int i = 0; i < kMaxD / kThreads; ++i) {
      const int d = threadIdx.x + kThreads * i;
      if (d >= D) break;
      float a = acc[i] * alpha;
      for (int j = j0; j < j1; ++j) a += p[j - j0] * to_f(Vb[size_t(j) * ks + d]);
      acc[i] = a;
    }
    __syncthreads();  // p and stat are rewritten by the next tile
  }
  // l lives in warp 0's lane 0: hand it to every thread.
  if (threadIdx.x == 0) stat[0] = l;
  __syncthreads();
  const float inv = 1.f / stat[0];
#pragma unroll
  for (int i = 0; i < kMaxD / kThreads; ++i) {
    const int d = threadIdx.x + kThreads * i;
    if (d < D) o[(size_t(b) * H + h) * D + d] = to_bf(acc[i] * inv);
  }
}
}  // namespace

void attention_decode(const bf16* q, const bf16* k_cache, const bf16* v_cache, int64_t n, float scale, bf16* o,
                      int64_t B, int64_t S, int64_t H, int64_t KV, int64_t D, Stream s) {
  LETHE_CHECK(D >= 1 && D <= kMaxD, "attention_decode: head dimension ", D, " is above the kernel's ", kMaxD);
  LETHE_CHECK(n >= 1 && n <= S && S <= INT32_MAX && KV >= 1 && H % KV == 0, "attention_decode: ", n,
              " keys of a cache of ", S, ", ", H, " query heads over ", KV, " kv heads");
  if (B == 0 || H == 0) return;  // an empty grid is a launch error
  const float scale_log2 = scale * 1.4426950408889634f;
  decode_kernel<<<unsigned(B * H), kThreads, 0, as_stream(s)>>>(dev(q), dev(k_cache), dev(v_cache), int(n), scale_log2,
                                                                dev(o), int(S), int(H), int(KV), int(D));
  check_launch("attention_decode");
}

}  // namespace lethe::cuda
