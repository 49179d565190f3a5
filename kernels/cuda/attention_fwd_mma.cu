// Attention forward in FlashAttention-2's structure (AttentionForwardKernel::mma): a block
// of 8 warps owns 128 queries of one head, each warp 16 of them end to end. Q goes to
// registers once (ldmatrix); key/value tiles of 64 rows stream through two shared buffers
// with cp.async, the next tile's copies in flight while the current one is multiplied;
// scores, the online softmax and the output accumulator never leave registers. Rows past
// the sequence's end are zero-filled by the copy and masked with the causal mask.
#include "kernels/cuda/attention_mma.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sm80.cuh"

namespace lethe::cuda::detail {
namespace {
using namespace lethe::cuda::mma;

constexpr int kThreads = 256, kBr = 128, kBc = 64;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
struct FwdSmem {
  static constexpr int ld = D + 8;  // padded rows: the 8 row addresses of an ldmatrix hit distinct banks
  static constexpr size_t tile = size_t(kBc) * ld * 2;
  static constexpr size_t q = 0;
  static constexpr size_t kv = q + size_t(kBr) * ld * 2;  // K0, V0, K1, V1
  static constexpr size_t bytes = kv + 4 * tile;
};

template <int D>
__global__ void __launch_bounds__(kThreads) flash_fwd_mma(const __nv_bfloat16* __restrict__ q,
                                                          const __nv_bfloat16* __restrict__ k,
                                                          const __nv_bfloat16* __restrict__ v, float scale_log2,
                                                          __nv_bfloat16* __restrict__ o, float* __restrict__ lse,
                                                          int64_t T, int H, int KV) {
  extern __shared__ __align__(128) unsigned char smem[];
  using S = FwdSmem<D>;
  constexpr int ld = S::ld;
  auto* Qs = reinterpret_cast<__nv_bfloat16*>(smem + S::q);
  const uint32_t qs = smem_addr(Qs), kvs = smem_addr(smem + S::kv);
  const int qb = gridDim.x - 1 - blockIdx.x;  // longest rows first: better tail balance
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t q0 = int64_t(qb) * kBr;
  const int64_t qstride = int64_t(H) * D, kstride = int64_t(KV) * D;
  const __nv_bfloat16* qbase = q + int64_t(b) * T * qstride + int64_t(h) * D;
  const __nv_bfloat16* kbase = k + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const __nv_bfloat16* vbase = v + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const int r0 = warp * 16;
  const int64_t first_row = q0 + r0, last_row = q0 + r0 + 15;
  // Per-lane byte offsets of the ldmatrix row addresses (mma_sm80.cuh): A tiles (Q) and
  // transposed B tiles (V) take matrix i at rows 8 (i & 1), cols 8 (i >> 1); B tiles
  // stored [n][k] (K) at rows 8 (i >> 1), cols 8 (i & 1).
  const uint32_t a_off = uint32_t(((lane & 15) * ld + 8 * (lane >> 4)) * 2);
  const uint32_t bk_off = uint32_t(((8 * (lane >> 4) + (lane & 7)) * ld + 8 * ((lane >> 3) & 1)) * 2);

  const int64_t n_tiles = min((T + kBc - 1) / kBc, (q0 + kBr - 1) / kBc + 1);
  auto issue_tile = [&](int64_t kt) {
    const uint32_t dst = kvs + uint32_t((kt & 1) * 2 * S::tile);
    cp_async_rows<D, kBc, kThreads>(dst, ld, kbase, kstride, kt * kBc, T);
    cp_async_rows<D, kBc, kThreads>(dst + uint32_t(S::tile), ld, vbase, kstride, kt * kBc, T);
  };
  cp_async_rows<D, kBr, kThreads>(qs, ld, qbase, qstride, q0, T);
  issue_tile(0);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};  // rows g and g + 8
  const int64_t qrow[2] = {first_row + g, first_row + g + 8};

  for (int64_t kt = 0; kt < n_tiles; ++kt) {
    const int64_t k0 = kt * kBc;
    cp_async_wait<0>();  // this thread's copies of tile kt (and of Q) have landed
    __syncthreads();     // everyone's have, and every warp is done with tile kt - 1's buffer
    if (kt + 1 < n_tiles) {
      issue_tile(kt + 1);
      cp_async_commit();
    }
    if (kt == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], qs + uint32_t(r0 * ld * 2) + a_off + kk * 32);
    }
    if (k0 > last_row) continue;  // every key of the tile is in this warp's future
    const uint32_t ks = kvs + uint32_t((kt & 1) * 2 * S::tile), vs = ks + uint32_t(S::tile);

    // S[16 rows, 64 keys] = Q K^T
    float sc[kBc / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int np = 0; np < kBc / 16; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, ks + bk_off + uint32_t((np * 16 * ld + kk * 16) * 2));
        mma16816(sc[2 * np], qf[kk], bf[0], bf[1]);
        mma16816(sc[2 * np + 1], qf[kk], bf[2], bf[3]);
      }

    // Online softmax in base 2. Only tiles that reach the diagonal or the end need the mask.
    const bool masked = k0 + kBc - 1 > first_row || k0 + kBc > T;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ri = e >> 1;
        float x = sc[nt][e] * scale_log2;
        if (masked) {
          const int64_t kj = k0 + nt * 8 + 2 * t + (e & 1);
          if (kj > qrow[ri] || kj >= T) x = -INFINITY;
        }
        sc[nt][e] = x;
        mx[ri] = fmaxf(mx[ri], x);
      }
    float alpha[2], base[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 1));
      mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 2));
      const float m_new = fmaxf(m_run[ri], mx[ri]);
      base[ri] = m_new == -INFINITY ? 0.f : m_new;  // a row with no visible key yet (past T)
      alpha[ri] = exp2f(m_run[ri] - base[ri]);
      m_run[ri] = m_new;
    }
    float rs[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < kBc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(sc[nt][e] - base[e >> 1]);
        sc[nt][e] = p;
        rs[e >> 1] += p;
      }
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      rs[ri] += __shfl_xor_sync(0xffffffffu, rs[ri], 1);
      rs[ri] += __shfl_xor_sync(0xffffffffu, rs[ri], 2);
      l_run[ri] = l_run[ri] * alpha[ri] + rs[ri];
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      acc[dt][0] *= alpha[0], acc[dt][1] *= alpha[0];
      acc[dt][2] *= alpha[1], acc[dt][3] *= alpha[1];
    }

    // O += P V: two adjacent 8-key score tiles, packed to bf16, are one 16-key A fragment.
#pragma unroll
    for (int j = 0; j < kBc / 16; ++j) {
      const uint32_t a[4] = {pack2(sc[2 * j][0], sc[2 * j][1]), pack2(sc[2 * j][2], sc[2 * j][3]),
                             pack2(sc[2 * j + 1][0], sc[2 * j + 1][1]), pack2(sc[2 * j + 1][2], sc[2 * j + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bf[4];
        ldmatrix_x4_trans(bf, vs + a_off + uint32_t((j * 16 * ld + dp * 16) * 2));
        mma16816(acc[2 * dp], a, bf[0], bf[1]);
        mma16816(acc[2 * dp + 1], a, bf[2], bf[3]);
      }
    }
  }

  // The output through this warp's own rows of the Q tile (no longer read), then out in
  // 16-byte stores.
  float inv[2];
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) inv[ri] = l_run[ri] > 0.f ? 1.f / l_run[ri] : 0.f;
  __nv_bfloat16* Ow = Qs + r0 * ld;
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    *reinterpret_cast<__nv_bfloat162*>(Ow + g * ld + dt * 8 + 2 * t) =
        __floats2bfloat162_rn(acc[dt][0] * inv[0], acc[dt][1] * inv[0]);
    *reinterpret_cast<__nv_bfloat162*>(Ow + (g + 8) * ld + dt * 8 + 2 * t) =
        __floats2bfloat162_rn(acc[dt][2] * inv[1], acc[dt][3] * inv[1]);
  }
  __syncwarp();
  constexpr int kVec = D / 8;
#pragma unroll
  for (int i = lane; i < 16 * kVec; i += 32) {
    const int r = i / kVec, c = (i % kVec) * 8;
    const int64_t qi = first_row + r;
    if (qi < T)
      *reinterpret_cast<uint4*>(o + (int64_t(b) * T + qi) * qstride + int64_t(h) * D + c) =
          *reinterpret_cast<const uint4*>(Ow + r * ld + c);
  }
#pragma unroll
  for (int ri = 0; ri < 2; ++ri)
    if (t == 0 && qrow[ri] < T) lse[(int64_t(b) * H + h) * T + qrow[ri]] = m_run[ri] * kLn2 + logf(l_run[ri]);
}
}  // namespace

void attention_forward_mma(const bf16* q, const bf16* k, const bf16* v, float scale, bf16* o, float* lse, int64_t B,
                           int64_t T, int64_t H, int64_t KV, int64_t D, Stream s) {
  with_head_dim(D, [&](auto d) {
    constexpr int kD = decltype(d)::value;
    // Opting in to more than 48 KB of dynamic shared memory is per kernel and device.
    static const bool opted_in = [] {
      LETHE_CUDA_CHECK(cudaFuncSetAttribute(flash_fwd_mma<kD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(FwdSmem<kD>::bytes)),
                       "attention_forward (mma)");
      return true;
    }();
    (void)opted_in;
    const dim3 grid(unsigned((T + kBr - 1) / kBr), unsigned(H), unsigned(B));
    flash_fwd_mma<kD><<<grid, kThreads, FwdSmem<kD>::bytes, as_stream(s)>>>(
        dev(q), dev(k), dev(v), scale * 1.4426950408889634f, dev(o), lse, T, int(H), int(KV));
  });
  check_launch("attention_forward (mma)");
}

}  // namespace lethe::cuda::detail
