// Attention backward in FlashAttention-2's structure (AttentionBackwardKernel::mma and
// ::mma_deterministic).
//
// dk/dv kernel: a block of 8 warps owns 128 keys of one kv head, each warp 16 of them, and
// walks every query head of the group and every 32-query tile at or after its keys. Per
// tile a warp forms S^T = K Q^T and dP^T = V dO^T for its keys (rows = keys, so P^T and
// dS^T come out of the accumulators already in the A-fragment layout of dV += P^T dO and
// dK += dS^T Q): dK and dV stay in registers for the whole walk, and Q/dO tiles stream
// through two shared buffers with cp.async. dQ = dS K needs every key of the block: dS^T
// goes to shared memory and the warps split the [32, D] tile, adding it to an fp32
// accumulator with atomics (whose order, and so whose last bits, vary run to run).
//
// Deterministic dq kernel: a block of 4 warps owns 64 queries of one head and walks the key
// tiles in order, recomputing P and dP, with dQ in registers; no atomics, the same bits on
// every run, for about 40% more attention-backward FLOPs.
#include "kernels/cuda/attention_mma.h"
#include "kernels/cuda/cast.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_sm80.cuh"

namespace lethe::cuda::detail {
namespace {
using namespace lethe::cuda::mma;

constexpr float kLog2e = 1.4426950408889634f;

// Per-lane byte offsets of ldmatrix row addresses for a tile with `ld`-element rows
// (mma_sm80.cuh): matrix i at rows 8 (i & 1), cols 8 (i >> 1) (A tiles, and transposed B
// tiles stored [k][n]); or at rows 8 (i >> 1), cols 8 (i & 1) (B tiles stored [n][k], and
// transposed A tiles stored [k][m]).
__device__ __forceinline__ uint32_t off_a(int lane, int ld) {
  return uint32_t(((lane & 15) * ld + 8 * (lane >> 4)) * 2);
}
__device__ __forceinline__ uint32_t off_b(int lane, int ld) {
  return uint32_t(((8 * (lane >> 4) + (lane & 7)) * ld + 8 * ((lane >> 3) & 1)) * 2);
}

// ---- dk, dv (and dq with atomics) ---------------------------------------------------------
constexpr int kThreads = 256, kBn = 128, kBm = 32;

template <int D>
struct BwdSmem {
  static constexpr int ld = D + 8, lds = kBm + 8;
  static constexpr size_t qtile = size_t(kBm) * ld * 2;
  static constexpr size_t k = 0;
  static constexpr size_t v = k + size_t(kBn) * ld * 2;
  static constexpr size_t qdo = v + size_t(kBn) * ld * 2;  // Q0, dO0, Q1, dO1
  static constexpr size_t ds = qdo + 4 * qtile;            // dS^T [kBn][kBm], bf16
  static constexpr size_t bytes = ds + size_t(kBn) * lds * 2;
};

template <int D, bool kAtomicDq>
__global__ void __launch_bounds__(kThreads) flash_bwd_mma(const __nv_bfloat16* __restrict__ dout,
                                                          const __nv_bfloat16* __restrict__ q,
                                                          const __nv_bfloat16* __restrict__ k,
                                                          const __nv_bfloat16* __restrict__ v,
                                                          const float* __restrict__ lse,
                                                          const float* __restrict__ delta, float scale_log2,
                                                          float scale, float* __restrict__ dq_acc,
                                                          __nv_bfloat16* __restrict__ dk,
                                                          __nv_bfloat16* __restrict__ dv, int64_t T, int H, int KV) {
  extern __shared__ __align__(128) unsigned char smem[];
  using S = BwdSmem<D>;
  constexpr int ld = S::ld, lds = S::lds;
  const uint32_t ks = smem_addr(smem + S::k), vs = smem_addr(smem + S::v), qdo = smem_addr(smem + S::qdo);
  auto* Ds = reinterpret_cast<__nv_bfloat16*>(smem + S::ds);
  const uint32_t ds = smem_addr(Ds);
  const int kb = gridDim.x - 1 - blockIdx.x;  // early keys see the most queries: start them first
  const int kvh = blockIdx.y, b = blockIdx.z, group = H / KV;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t k0 = int64_t(kb) * kBn, kw0 = k0 + warp * 16;
  const int64_t qstride = int64_t(H) * D, kstride = int64_t(KV) * D;
  const int64_t koff = int64_t(b) * T * kstride + int64_t(kvh) * D;
  const uint32_t a_off = off_a(lane, ld), b_off = off_b(lane, ld);

  const int64_t n_q = (T - k0 + kBm - 1) / kBm, n_tiles = group * n_q;
  auto head_of = [&](int64_t i) { return kvh * group + int(i / n_q); };
  auto q0_of = [&](int64_t i) { return k0 + (i % n_q) * kBm; };
  auto issue = [&](int64_t i) {
    const int64_t qoff = int64_t(b) * T * qstride + int64_t(head_of(i)) * D;
    const uint32_t dst = qdo + uint32_t((i & 1) * 2 * S::qtile);
    cp_async_rows<D, kBm, kThreads>(dst, ld, q + qoff, qstride, q0_of(i), T);
    cp_async_rows<D, kBm, kThreads>(dst + uint32_t(S::qtile), ld, dout + qoff, qstride, q0_of(i), T);
  };
  cp_async_rows<D, kBn, kThreads>(ks, ld, k + koff, kstride, k0, T);
  cp_async_rows<D, kBn, kThreads>(vs, ld, v + koff, kstride, k0, T);
  issue(0);
  cp_async_commit();

  float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[dt][e] = dv_acc[dt][e] = 0.f;

  for (int64_t i = 0; i < n_tiles; ++i) {
    const int hh = head_of(i);
    const int64_t q0 = q0_of(i);
    const float* lse_h = lse + (int64_t(b) * H + hh) * T;
    const float* delta_h = delta + (int64_t(b) * H + hh) * T;
    // This thread's query columns (C layout: col 8 nt + 2 t + e), fetched before the wait.
    float l2[kBm / 8][2], dl[kBm / 8][2];
#pragma unroll
    for (int nt = 0; nt < kBm / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t qi = q0 + nt * 8 + 2 * t + e;
        l2[nt][e] = qi < T ? lse_h[qi] * kLog2e : 0.f;
        dl[nt][e] = qi < T ? delta_h[qi] : 0.f;
      }
    cp_async_wait<0>();
    __syncthreads();  // tile i has landed; every warp is done with tile i - 1 and with dS^T
    if (i + 1 < n_tiles) {
      issue(i + 1);
      cp_async_commit();
    }
    const uint32_t qs = qdo + uint32_t((i & 1) * 2 * S::qtile), os = qs + uint32_t(S::qtile);

    float st[kBm / 8][4], dpt[kBm / 8][4];  // S^T, then P^T; dP^T, then dS^T
#pragma unroll
    for (int nt = 0; nt < kBm / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
    const bool active = kw0 <= q0 + kBm - 1 && kw0 < T;  // some key of this warp sees some query
    if (active) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[4], va[4];
        ldmatrix_x4(ka, ks + uint32_t(warp * 16 * ld * 2) + a_off + kk * 32);
        ldmatrix_x4(va, vs + uint32_t(warp * 16 * ld * 2) + a_off + kk * 32);
#pragma unroll
        for (int np = 0; np < kBm / 16; ++np) {
          uint32_t bq[4], bo[4];
          ldmatrix_x4(bq, qs + b_off + uint32_t((np * 16 * ld + kk * 16) * 2));
          ldmatrix_x4(bo, os + b_off + uint32_t((np * 16 * ld + kk * 16) * 2));
          mma16816(st[2 * np], ka, bq[0], bq[1]);
          mma16816(st[2 * np + 1], ka, bq[2], bq[3]);
          mma16816(dpt[2 * np], va, bo[0], bo[1]);
          mma16816(dpt[2 * np + 1], va, bo[2], bo[3]);
        }
      }
      // P^T = exp(scale S^T - lse) under the causal mask, dS^T = P^T (dP^T - delta).
      // Element e of tile nt: key kw0 + g + 8 (e >> 1), query q0 + 8 nt + 2 t + (e & 1).
      const bool masked = kw0 + 15 > q0 || q0 + kBm > T || kw0 + 16 > T;
#pragma unroll
      for (int nt = 0; nt < kBm / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float p = exp2f(st[nt][e] * scale_log2 - l2[nt][e & 1]);
          if (masked) {
            const int64_t kj = kw0 + g + 8 * (e >> 1), qi = q0 + nt * 8 + 2 * t + (e & 1);
            if (kj > qi || qi >= T || kj >= T) p = 0.f;
          }
          st[nt][e] = p;
          dpt[nt][e] = p * (dpt[nt][e] - dl[nt][e & 1]);
        }
      // dV += P^T dO, dK += dS^T Q: two adjacent 8-query tiles are one 16-deep A fragment.
#pragma unroll
      for (int j = 0; j < kBm / 16; ++j) {
        const uint32_t pa[4] = {pack2(st[2 * j][0], st[2 * j][1]), pack2(st[2 * j][2], st[2 * j][3]),
                                pack2(st[2 * j + 1][0], st[2 * j + 1][1]),
                                pack2(st[2 * j + 1][2], st[2 * j + 1][3])};
        const uint32_t da[4] = {pack2(dpt[2 * j][0], dpt[2 * j][1]), pack2(dpt[2 * j][2], dpt[2 * j][3]),
                                pack2(dpt[2 * j + 1][0], dpt[2 * j + 1][1]),
                                pack2(dpt[2 * j + 1][2], dpt[2 * j + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bo[4], bq[4];
          ldmatrix_x4_trans(bo, os + a_off + uint32_t((j * 16 * ld + dp * 16) * 2));
          mma16816(dv_acc[2 * dp], pa, bo[0], bo[1]);
          mma16816(dv_acc[2 * dp + 1], pa, bo[2], bo[3]);
          ldmatrix_x4_trans(bq, qs + a_off + uint32_t((j * 16 * ld + dp * 16) * 2));
          mma16816(dk_acc[2 * dp], da, bq[0], bq[1]);
          mma16816(dk_acc[2 * dp + 1], da, bq[2], bq[3]);
        }
      }
    }
    if constexpr (kAtomicDq) {
      // dS^T in bf16 (as the dK product used it; zeros for an inactive warp).
#pragma unroll
      for (int nt = 0; nt < kBm / 8; ++nt) {
        *reinterpret_cast<__nv_bfloat162*>(Ds + (warp * 16 + g) * lds + nt * 8 + 2 * t) =
            __floats2bfloat162_rn(dpt[nt][0], dpt[nt][1]);
        *reinterpret_cast<__nv_bfloat162*>(Ds + (warp * 16 + g + 8) * lds + nt * 8 + 2 * t) =
            __floats2bfloat162_rn(dpt[nt][2], dpt[nt][3]);
      }
      __syncthreads();
      // dQ[32, D] = dS K over the block's 128 keys: warp w takes queries 16 (w & 1).. and
      // pairs of 8-column tiles w >> 1, (w >> 1) + 4, ...
      const int m = warp & 1;
      const int64_t qoff = int64_t(b) * T * qstride + int64_t(hh) * D;
      const int64_t rows[2] = {q0 + m * 16 + g, q0 + m * 16 + g + 8};
      for (int dp = warp >> 1; dp < D / 16; dp += kThreads / 64) {
        float dq[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int kk = 0; kk < kBn / 16; ++kk) {
          uint32_t a[4], bk[4];
          ldmatrix_x4_trans(a, ds + off_b(lane, lds) + uint32_t((kk * 16 * lds + m * 16) * 2));
          ldmatrix_x4_trans(bk, ks + a_off + uint32_t((kk * 16 * ld + dp * 16) * 2));
          mma16816(dq[0], a, bk[0], bk[1]);
          mma16816(dq[1], a, bk[2], bk[3]);
        }
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
          for (int ri = 0; ri < 2; ++ri)
            if (rows[ri] < T) {
              float* dst = dq_acc + qoff + rows[ri] * qstride + dp * 16 + n * 8 + 2 * t;
              atomicAdd(dst, dq[n][2 * ri] * scale);
              atomicAdd(dst + 1, dq[n][2 * ri + 1] * scale);
            }
      }
    }
  }

#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const int64_t kj = kw0 + g + 8 * ri;
    if (kj >= T) continue;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int64_t o = koff + kj * kstride + dt * 8 + 2 * t;
      *reinterpret_cast<__nv_bfloat162*>(dk + o) =
          __floats2bfloat162_rn(dk_acc[dt][2 * ri] * scale, dk_acc[dt][2 * ri + 1] * scale);
      *reinterpret_cast<__nv_bfloat162*>(dv + o) = __floats2bfloat162_rn(dv_acc[dt][2 * ri], dv_acc[dt][2 * ri + 1]);
    }
  }
}

// ---- dq in a fixed order ---------------------------------------------------------------
constexpr int kDqThreads = 128, kDqBr = 64, kDqBc = 64;

template <int D>
struct DqSmem {
  static constexpr int ld = D + 8;
  static constexpr size_t tile = size_t(kDqBc) * ld * 2;
  static constexpr size_t q = 0;
  static constexpr size_t dout = q + size_t(kDqBr) * ld * 2;
  static constexpr size_t kv = dout + size_t(kDqBr) * ld * 2;  // K0, V0, K1, V1
  static constexpr size_t bytes = kv + 4 * tile;
};

template <int D>
__global__ void __launch_bounds__(kDqThreads) flash_dq_mma(const __nv_bfloat16* __restrict__ dout,
                                                           const __nv_bfloat16* __restrict__ q,
                                                           const __nv_bfloat16* __restrict__ k,
                                                           const __nv_bfloat16* __restrict__ v,
                                                           const float* __restrict__ lse,
                                                           const float* __restrict__ delta, float scale_log2,
                                                           float scale, __nv_bfloat16* __restrict__ dq, int64_t T,
                                                           int H, int KV) {
  extern __shared__ __align__(128) unsigned char smem[];
  using S = DqSmem<D>;
  constexpr int ld = S::ld;
  const uint32_t qs = smem_addr(smem + S::q), os = smem_addr(smem + S::dout), kvs = smem_addr(smem + S::kv);
  const int qb = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t q0 = int64_t(qb) * kDqBr, first_row = q0 + warp * 16, last_row = first_row + 15;
  const int64_t qstride = int64_t(H) * D, kstride = int64_t(KV) * D;
  const int64_t qoff = int64_t(b) * T * qstride + int64_t(h) * D;
  const int64_t koff = int64_t(b) * T * kstride + int64_t(kvh) * D;
  const uint32_t a_off = off_a(lane, ld), b_off = off_b(lane, ld), wrow = uint32_t(warp * 16 * ld * 2);

  const int64_t n_tiles = min((T + kDqBc - 1) / kDqBc, (q0 + kDqBr - 1) / kDqBc + 1);
  auto issue_tile = [&](int64_t kt) {
    const uint32_t dst = kvs + uint32_t((kt & 1) * 2 * S::tile);
    cp_async_rows<D, kDqBc, kDqThreads>(dst, ld, k + koff, kstride, kt * kDqBc, T);
    cp_async_rows<D, kDqBc, kDqThreads>(dst + uint32_t(S::tile), ld, v + koff, kstride, kt * kDqBc, T);
  };
  cp_async_rows<D, kDqBr, kDqThreads>(qs, ld, q + qoff, qstride, q0, T);
  cp_async_rows<D, kDqBr, kDqThreads>(os, ld, dout + qoff, qstride, q0, T);
  issue_tile(0);
  cp_async_commit();

  const int64_t qrow[2] = {first_row + g, first_row + g + 8};
  float l2[2], dl[2];
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const bool in = qrow[ri] < T;
    l2[ri] = in ? lse[(int64_t(b) * H + h) * T + qrow[ri]] * kLog2e : 0.f;
    dl[ri] = in ? delta[(int64_t(b) * H + h) * T + qrow[ri]] : 0.f;
  }
  float acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;

  for (int64_t kt = 0; kt < n_tiles; ++kt) {
    const int64_t k0 = kt * kDqBc;
    cp_async_wait<0>();
    __syncthreads();
    if (kt + 1 < n_tiles) {
      issue_tile(kt + 1);
      cp_async_commit();
    }
    if (k0 > last_row) continue;
    const uint32_t kts = kvs + uint32_t((kt & 1) * 2 * S::tile), vts = kts + uint32_t(S::tile);
    float sc[kDqBc / 8][4], dp[kDqBc / 8][4];
#pragma unroll
    for (int nt = 0; nt < kDqBc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4], oa[4];
      ldmatrix_x4(qa, qs + wrow + a_off + kk * 32);
      ldmatrix_x4(oa, os + wrow + a_off + kk * 32);
#pragma unroll
      for (int np = 0; np < kDqBc / 16; ++np) {
        uint32_t bk[4], bv[4];
        ldmatrix_x4(bk, kts + b_off + uint32_t((np * 16 * ld + kk * 16) * 2));
        ldmatrix_x4(bv, vts + b_off + uint32_t((np * 16 * ld + kk * 16) * 2));
        mma16816(sc[2 * np], qa, bk[0], bk[1]);
        mma16816(sc[2 * np + 1], qa, bk[2], bk[3]);
        mma16816(dp[2 * np], oa, bv[0], bv[1]);
        mma16816(dp[2 * np + 1], oa, bv[2], bv[3]);
      }
    }
    const bool masked = k0 + kDqBc - 1 > first_row || k0 + kDqBc > T;
#pragma unroll
    for (int nt = 0; nt < kDqBc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ri = e >> 1;
        float p = exp2f(sc[nt][e] * scale_log2 - l2[ri]);
        if (masked) {
          const int64_t kj = k0 + nt * 8 + 2 * t + (e & 1);
          if (kj > qrow[ri] || kj >= T || qrow[ri] >= T) p = 0.f;
        }
        dp[nt][e] = p * (dp[nt][e] - dl[ri]);
      }
    // dQ += dS K
#pragma unroll
    for (int j = 0; j < kDqBc / 16; ++j) {
      const uint32_t a[4] = {pack2(dp[2 * j][0], dp[2 * j][1]), pack2(dp[2 * j][2], dp[2 * j][3]),
                             pack2(dp[2 * j + 1][0], dp[2 * j + 1][1]), pack2(dp[2 * j + 1][2], dp[2 * j + 1][3])};
#pragma unroll
      for (int dq2 = 0; dq2 < D / 16; ++dq2) {
        uint32_t bk[4];
        ldmatrix_x4_trans(bk, kts + a_off + uint32_t((j * 16 * ld + dq2 * 16) * 2));
        mma16816(acc[2 * dq2], a, bk[0], bk[1]);
        mma16816(acc[2 * dq2 + 1], a, bk[2], bk[3]);
      }
    }
  }
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    if (qrow[ri] >= T) continue;
    __nv_bfloat16* row = dq + qoff + qrow[ri] * qstride;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<__nv_bfloat162*>(row + dt * 8 + 2 * t) =
          __floats2bfloat162_rn(acc[dt][2 * ri] * scale, acc[dt][2 * ri + 1] * scale);
  }
}

template <typename K>
void opt_in_smem(K kernel, size_t bytes, const char* what) {
  LETHE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), what);
}
}  // namespace

void attention_backward_mma(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                            const float* delta, float scale, float* dq_acc, bf16* dq, bf16* dk, bf16* dv,
                            bool deterministic, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, Stream s) {
  with_head_dim(D, [&](auto d) {
    constexpr int kD = decltype(d)::value;
    // Opting in to more than 48 KB of dynamic shared memory is per kernel and device.
    static const bool opted_in = [] {
      opt_in_smem(flash_bwd_mma<kD, true>, BwdSmem<kD>::bytes, "attention_backward (mma)");
      opt_in_smem(flash_bwd_mma<kD, false>, BwdSmem<kD>::bytes, "attention_backward (mma)");
      opt_in_smem(flash_dq_mma<kD>, DqSmem<kD>::bytes, "attention_backward (mma)");
      return true;
    }();
    (void)opted_in;
    const float sl2 = scale * kLog2e;
    const dim3 grid(unsigned((T + kBn - 1) / kBn), unsigned(KV), unsigned(B));
    if (deterministic) {
      flash_bwd_mma<kD, false><<<grid, kThreads, BwdSmem<kD>::bytes, as_stream(s)>>>(
          dev(dout), dev(q), dev(k), dev(v), lse, delta, sl2, scale, nullptr, dev(dk), dev(dv), T, int(H), int(KV));
      check_launch("attention_backward (mma, dk/dv)");
      const dim3 qgrid(unsigned((T + kDqBr - 1) / kDqBr), unsigned(H), unsigned(B));
      flash_dq_mma<kD><<<qgrid, kDqThreads, DqSmem<kD>::bytes, as_stream(s)>>>(
          dev(dout), dev(q), dev(k), dev(v), lse, delta, sl2, scale, dev(dq), T, int(H), int(KV));
      check_launch("attention_backward (mma, dq)");
    } else {
      flash_bwd_mma<kD, true><<<grid, kThreads, BwdSmem<kD>::bytes, as_stream(s)>>>(
          dev(dout), dev(q), dev(k), dev(v), lse, delta, sl2, scale, dq_acc, dev(dk), dev(dv), T, int(H), int(KV));
      check_launch("attention_backward (mma)");
      cast_f32_to_bf16(dq_acc, dq, B * T * H * D, s);
    }
  });
}

}  // namespace lethe::cuda::detail
