#include "kernels/cuda/attention.h"

#include <mma.h>

#include "kernels/cuda/attention_mma.h"
#include "kernels/cuda/cast.h"
#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
using namespace nvcuda;
using detail::with_head_dim;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kThreads = 128;  // 4 warps
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory rows are padded (8 bf16 / 4 floats) against bank conflicts; the pads keep
// every 16-row tile start 32-byte aligned, as WMMA loads require.
template <int D> struct Ld {
  static constexpr int h = D + 8;   // bf16 rows of width D
  static constexpr int f = D + 4;   // fp32 rows of width D
};
constexpr int kTileH = 64 + 8, kTileF = 64 + 4;  // rows of width 64

// rows x D bf16 from global rows t0.. (row stride `stride` elements) into shared memory;
// rows at or past T are zero, so padded queries and keys contribute nothing.
template <int D>
__device__ void load_rows(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t stride, int64_t t0, int rows,
                          int64_t T) {
  constexpr int kVec = D / 8;
  for (int idx = threadIdx.x; idx < rows * kVec; idx += blockDim.x) {
    const int r = idx / kVec, c = (idx % kVec) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (t0 + r < T) v = *reinterpret_cast<const uint4*>(src + (t0 + r) * stride + c);
    *reinterpret_cast<uint4*>(dst + r * Ld<D>::h + c) = v;
  }
}

// ---- forward -------------------------------------------------------------------------
// Block: 64 queries of one head; each warp owns 16 query rows end to end (scores, softmax,
// output), so after the shared K/V tile is loaded warps only sync with themselves.
constexpr int kBr = 64, kBc = 64;

template <int D>
struct FwdSmem {
  static constexpr size_t q = 0;
  static constexpr size_t k = q + size_t(kBr) * Ld<D>::h * 2;
  static constexpr size_t v = k + size_t(kBc) * Ld<D>::h * 2;
  static constexpr size_t s = v + size_t(kBc) * Ld<D>::h * 2;
  static constexpr size_t p = s + size_t(kBr) * kTileF * 4;
  static constexpr size_t o = p + size_t(kBr) * kTileH * 2;
  static constexpr size_t stats = o + size_t(kBr) * Ld<D>::f * 4;
  static constexpr size_t bytes = stats + 3 * kBr * 4;
};

template <int D>
__global__ void __launch_bounds__(kThreads) flash_fwd(const __nv_bfloat16* __restrict__ q,
                                                      const __nv_bfloat16* __restrict__ k,
                                                      const __nv_bfloat16* __restrict__ v, float scale_log2,
                                                      __nv_bfloat16* __restrict__ o, float* __restrict__ lse,
                                                      int64_t T, int H, int KV) {
  extern __shared__ __align__(128) unsigned char smem[];
  using S = FwdSmem<D>;
  auto* Qs = reinterpret_cast<__nv_bfloat16*>(smem + S::q);
  auto* Ks = reinterpret_cast<__nv_bfloat16*>(smem + S::k);
  auto* Vs = reinterpret_cast<__nv_bfloat16*>(smem + S::v);
  auto* Ss = reinterpret_cast<float*>(smem + S::s);
  auto* Ps = reinterpret_cast<__nv_bfloat16*>(smem + S::p);
  auto* Os = reinterpret_cast<float*>(smem + S::o);
  auto* row_m = reinterpret_cast<float*>(smem + S::stats);
  float* row_l = row_m + kBr;
  float* row_a = row_l + kBr;

  const int qb = gridDim.x - 1 - blockIdx.x;  // longest rows first: better tail balance
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t q0 = int64_t(qb) * kBr;
  const int64_t qstride = int64_t(H) * D, kstride = int64_t(KV) * D;
  const __nv_bfloat16* qbase = q + int64_t(b) * T * qstride + int64_t(h) * D;
  const __nv_bfloat16* kbase = k + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const __nv_bfloat16* vbase = v + int64_t(b) * T * kstride + int64_t(kvh) * D;

  load_rows<D>(Qs, qbase, qstride, q0, kBr, T);
  for (int i = threadIdx.x; i < kBr * Ld<D>::f; i += blockDim.x) Os[i] = 0.f;
  for (int i = threadIdx.x; i < kBr; i += blockDim.x) {
    row_m[i] = -INFINITY;
    row_l[i] = 0.f;
  }
  const int64_t n_tiles = min((T + kBc - 1) / kBc, (q0 + kBr - 1) / kBc + 1);
  const int r0 = warp * 16;
  for (int64_t kt = 0; kt < n_tiles; ++kt) {
    const int64_t k0 = kt * kBc;
    __syncthreads();  // every warp is done with the previous K/V tile
    load_rows<D>(Ks, kbase, kstride, k0, kBc, T);
    load_rows<D>(Vs, vbase, kstride, k0, kBc, T);
    __syncthreads();

    // S[16 rows of this warp, 64 keys] = Q K^T
    for (int ct = 0; ct < kBc / 16; ++ct) {
      FragC acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        FragA a;
        FragBT bt;
        wmma::load_matrix_sync(a, Qs + r0 * Ld<D>::h + kk * 16, Ld<D>::h);
        wmma::load_matrix_sync(bt, Ks + ct * 16 * Ld<D>::h + kk * 16, Ld<D>::h);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(Ss + r0 * kTileF + ct * 16, acc, kTileF, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax in base 2, one row at a time across the warp's 32 lanes.
    for (int r = r0; r < r0 + 16; ++r) {
      const int64_t qi = q0 + r;
      float s[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = lane + 32 * e;
        const int64_t kj = k0 + c;
        s[e] = (kj <= qi && kj < T) ? Ss[r * kTileF + c] * scale_log2 : -INFINITY;
      }
      const float m_old = row_m[r];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(s[0], s[1])));
      // A row with no visible key yet (only padded rows past T) keeps m = -inf: guard the
      // exponent so it produces zeros, not NaN.
      const float base = m_new == -INFINITY ? 0.f : m_new;
      float psum = 0.f;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = exp2f(s[e] - base);
        psum += p;
        Ps[r * kTileH + lane + 32 * e] = to_bf(p);
      }
      psum = warp_sum(psum);
      if (lane == 0) {
        const float alpha = exp2f(m_old - base);
        row_a[r] = alpha;
        row_l[r] = row_l[r] * alpha + psum;
        row_m[r] = m_new;
      }
    }
    __syncwarp();
    for (int r = r0; r < r0 + 16; ++r) {
      const float alpha = row_a[r];
      for (int c = lane; c < D; c += 32) Os[r * Ld<D>::f + c] *= alpha;
    }
    __syncwarp();

    // O[16 rows, D] += P V
    for (int dt = 0; dt < D / 16; ++dt) {
      FragC acc;
      wmma::load_matrix_sync(acc, Os + r0 * Ld<D>::f + dt * 16, Ld<D>::f, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        FragA a;
        FragB bb;
        wmma::load_matrix_sync(a, Ps + r0 * kTileH + kk * 16, kTileH);
        wmma::load_matrix_sync(bb, Vs + kk * 16 * Ld<D>::h + dt * 16, Ld<D>::h);
        wmma::mma_sync(acc, a, bb, acc);
      }
      wmma::store_matrix_sync(Os + r0 * Ld<D>::f + dt * 16, acc, Ld<D>::f, wmma::mem_row_major);
    }
    __syncwarp();
  }

  for (int r = r0; r < r0 + 16; ++r) {
    const int64_t qi = q0 + r;
    if (qi >= T) break;
    const float l = row_l[r], inv = 1.f / l;
    __nv_bfloat16* orow = o + (int64_t(b) * T + qi) * qstride + int64_t(h) * D;
    for (int c = lane; c < D; c += 32) orow[c] = to_bf(Os[r * Ld<D>::f + c] * inv);
    if (lane == 0) lse[(int64_t(b) * H + h) * T + qi] = row_m[r] * kLn2 + logf(l);
  }
}

// ---- backward ------------------------------------------------------------------------
// Block: 64 keys of one kv head; it walks every query head of the group and every query
// tile of 32 rows at or after its keys, accumulating dK and dV in shared fp32.
constexpr int kBq = 32;

template <int D>
struct BwdSmem {
  static constexpr size_t k = 0;
  static constexpr size_t v = k + size_t(kBc) * Ld<D>::h * 2;
  static constexpr size_t dk = v + size_t(kBc) * Ld<D>::h * 2;
  static constexpr size_t dv = dk + size_t(kBc) * Ld<D>::f * 4;
  static constexpr size_t q = dv + size_t(kBc) * Ld<D>::f * 4;
  static constexpr size_t dout = q + size_t(kBq) * Ld<D>::h * 2;
  static constexpr size_t s = dout + size_t(kBq) * Ld<D>::h * 2;   // S, then dP after it;
  static constexpr size_t dp = s + size_t(kBq) * kTileF * 4;       // both reused for the dQ tile
  static constexpr size_t pb = dp + size_t(kBq) * kTileF * 4;
  static constexpr size_t dsb = pb + size_t(kBq) * kTileH * 2;
  static constexpr size_t stats = dsb + size_t(kBq) * kTileH * 2;
  static constexpr size_t bytes = stats + 2 * kBq * 4;
  static_assert(size_t(kBq) * Ld<D>::f <= 2 * size_t(kBq) * kTileF, "dQ tile must fit over S and dP");
};

__global__ void delta_kernel(const __nv_bfloat16* __restrict__ dout, const __nv_bfloat16* __restrict__ o,
                             float* __restrict__ delta, int64_t rows, int64_t T, int H, int D) {
  // One warp per (b, t, h) row; delta is laid out [B, H, T] like lse.
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const __nv_bfloat16 *a = dout + row * D, *c = o + row * D;
  float s = 0.f;
  for (int i = lane; i < D; i += 32) s += to_f(a[i]) * to_f(c[i]);
  s = warp_sum(s);
  const int64_t h = row % H, t = (row / H) % T, b = row / (int64_t(H) * T);
  if (lane == 0) delta[(b * H + h) * T + t] = s;
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_bwd(const __nv_bfloat16* __restrict__ dout,
                                                      const __nv_bfloat16* __restrict__ q,
                                                      const __nv_bfloat16* __restrict__ k,
                                                      const __nv_bfloat16* __restrict__ v,
                                                      const float* __restrict__ lse, const float* __restrict__ delta,
                                                      float scale, float* __restrict__ dq_acc,
                                                      __nv_bfloat16* __restrict__ dk, __nv_bfloat16* __restrict__ dv,
                                                      int64_t T, int H, int KV) {
  extern __shared__ __align__(128) unsigned char smem[];
  using S = BwdSmem<D>;
  auto* Ks = reinterpret_cast<__nv_bfloat16*>(smem + S::k);
  auto* Vs = reinterpret_cast<__nv_bfloat16*>(smem + S::v);
  auto* dKs = reinterpret_cast<float*>(smem + S::dk);
  auto* dVs = reinterpret_cast<float*>(smem + S::dv);
  auto* Qs = reinterpret_cast<__nv_bfloat16*>(smem + S::q);
  auto* dOs = reinterpret_cast<__nv_bfloat16*>(smem + S::dout);
  auto* Ss = reinterpret_cast<float*>(smem + S::s);
  auto* dPs = reinterpret_cast<float*>(smem + S::dp);
  auto* dQs = Ss;
  auto* Pb = reinterpret_cast<__nv_bfloat16*>(smem + S::pb);
  auto* dSb = reinterpret_cast<__nv_bfloat16*>(smem + S::dsb);
  auto* lse_s = reinterpret_cast<float*>(smem + S::stats);
  float* delta_s = lse_s + kBq;

  const int kb = gridDim.x - 1 - blockIdx.x;  // early keys see the most queries: start them first
  const int kvh = blockIdx.y, b = blockIdx.z, group = H / KV;
  const int warp = threadIdx.x >> 5;
  const int64_t k0 = int64_t(kb) * kBc;
  const int64_t qstride = int64_t(H) * D, kstride = int64_t(KV) * D;
  const int64_t koff = int64_t(b) * T * kstride + int64_t(kvh) * D;

  load_rows<D>(Ks, k + koff, kstride, k0, kBc, T);
  load_rows<D>(Vs, v + koff, kstride, k0, kBc, T);
  for (int i = threadIdx.x; i < kBc * Ld<D>::f; i += blockDim.x) dKs[i] = dVs[i] = 0.f;

  for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
    const int64_t qoff = int64_t(b) * T * qstride + int64_t(h) * D;
    const float* lse_h = lse + (int64_t(b) * H + h) * T;
    const float* delta_h = delta + (int64_t(b) * H + h) * T;
    for (int64_t q0 = k0; q0 < T; q0 += kBq) {
      __syncthreads();  // previous tile fully consumed (and K/V/dK/dV initialised)
      load_rows<D>(Qs, q + qoff, qstride, q0, kBq, T);
      load_rows<D>(dOs, dout + qoff, qstride, q0, kBq, T);
      for (int i = threadIdx.x; i < kBq; i += blockDim.x) {
        lse_s[i] = q0 + i < T ? lse_h[q0 + i] : 0.f;
        delta_s[i] = q0 + i < T ? delta_h[q0 + i] : 0.f;
      }
      __syncthreads();

      // S = Q K^T and dP = dO V^T, [32, 64] each: 8 tiles each, 2 per warp.
      for (int ti = warp * 2; ti < warp * 2 + 2; ++ti) {
        const int rt = ti / 4, ct = ti % 4;
        FragC accs, accp;
        wmma::fill_fragment(accs, 0.f);
        wmma::fill_fragment(accp, 0.f);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          FragA a;
          FragBT bt;
          wmma::load_matrix_sync(a, Qs + rt * 16 * Ld<D>::h + kk * 16, Ld<D>::h);
          wmma::load_matrix_sync(bt, Ks + ct * 16 * Ld<D>::h + kk * 16, Ld<D>::h);
          wmma::mma_sync(accs, a, bt, accs);
          wmma::load_matrix_sync(a, dOs + rt * 16 * Ld<D>::h + kk * 16, Ld<D>::h);
          wmma::load_matrix_sync(bt, Vs + ct * 16 * Ld<D>::h + kk * 16, Ld<D>::h);
          wmma::mma_sync(accp, a, bt, accp);
        }
        wmma::store_matrix_sync(Ss + rt * 16 * kTileF + ct * 16, accs, kTileF, wmma::mem_row_major);
        wmma::store_matrix_sync(dPs + rt * 16 * kTileF + ct * 16, accp, kTileF, wmma::mem_row_major);
      }
      __syncthreads();

      // P = exp(scale*S - lse) under the causal mask; dS = P * (dP - delta).
      for (int i = threadIdx.x; i < kBq * kBc; i += blockDim.x) {
        const int r = i / kBc, c = i % kBc;
        const int64_t qi = q0 + r, kj = k0 + c;
        float p = 0.f, ds = 0.f;
        if (qi < T && kj < T && kj <= qi) {
          p = __expf(Ss[r * kTileF + c] * scale - lse_s[r]);
          ds = p * (dPs[r * kTileF + c] - delta_s[r]);
        }
        Pb[r * kTileH + c] = to_bf(p);
        dSb[r * kTileH + c] = to_bf(ds);
      }
      __syncthreads();

      // dV += P^T dO and dK += dS^T Q: [64, D] each, (4 x D/16) tiles split over warps.
      for (int ti = warp; ti < 4 * (D / 16); ti += 4) {
        const int rt = ti / (D / 16), ct = ti % (D / 16);
        FragC accv, acck;
        wmma::load_matrix_sync(accv, dVs + rt * 16 * Ld<D>::f + ct * 16, Ld<D>::f, wmma::mem_row_major);
        wmma::load_matrix_sync(acck, dKs + rt * 16 * Ld<D>::f + ct * 16, Ld<D>::f, wmma::mem_row_major);
#pragma unroll
        for (int kk = 0; kk < kBq / 16; ++kk) {
          FragAT at;
          FragB bb;
          wmma::load_matrix_sync(at, Pb + kk * 16 * kTileH + rt * 16, kTileH);
          wmma::load_matrix_sync(bb, dOs + kk * 16 * Ld<D>::h + ct * 16, Ld<D>::h);
          wmma::mma_sync(accv, at, bb, accv);
          wmma::load_matrix_sync(at, dSb + kk * 16 * kTileH + rt * 16, kTileH);
          wmma::load_matrix_sync(bb, Qs + kk * 16 * Ld<D>::h + ct * 16, Ld<D>::h);
          wmma::mma_sync(acck, at, bb, acck);
        }
        wmma::store_matrix_sync(dVs + rt * 16 * Ld<D>::f + ct * 16, accv, Ld<D>::f, wmma::mem_row_major);
        wmma::store_matrix_sync(dKs + rt * 16 * Ld<D>::f + ct * 16, acck, Ld<D>::f, wmma::mem_row_major);
      }
      // dQ tile = dS K, [32, D], written over S and dP (no longer read after the barrier above).
      for (int ti = warp; ti < 2 * (D / 16); ti += 4) {
        const int rt = ti / (D / 16), ct = ti % (D / 16);
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int kk = 0; kk < kBc / 16; ++kk) {
          FragA a;
          FragB bb;
          wmma::load_matrix_sync(a, dSb + rt * 16 * kTileH + kk * 16, kTileH);
          wmma::load_matrix_sync(bb, Ks + kk * 16 * Ld<D>::h + ct * 16, Ld<D>::h);
          wmma::mma_sync(acc, a, bb, acc);
        }
        wmma::store_matrix_sync(dQs + rt * 16 * Ld<D>::f + ct * 16, acc, Ld<D>::f, wmma::mem_row_major);
      }
      __syncthreads();
      for (int i = threadIdx.x; i < kBq * D; i += blockDim.x) {
        const int r = i / D, c = i % D;
        if (q0 + r < T) atomicAdd(dq_acc + qoff + (q0 + r) * qstride + c, dQs[r * Ld<D>::f + c] * scale);
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBc * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    if (k0 + r >= T) continue;
    const int64_t g = koff + (k0 + r) * kstride + c;
    dk[g] = to_bf(dKs[r * Ld<D>::f + c] * scale);
    dv[g] = to_bf(dVs[r * Ld<D>::f + c]);
  }
}

template <int D>
void set_smem_limits() {
  // Opting in to more than 48 KB of dynamic shared memory is per kernel and per device;
  // one call per process suffices for the single-device engine.
  static bool done = false;
  if (done) return;
  LETHE_CUDA_CHECK(cudaFuncSetAttribute(flash_fwd<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(FwdSmem<D>::bytes)),
                   "attention");
  LETHE_CUDA_CHECK(cudaFuncSetAttribute(flash_bwd<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(BwdSmem<D>::bytes)),
                   "attention");
  done = true;
}

void check_dims(int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, const char* op) {
  // Heads and sequences index grid.y and grid.z (at most 65535 each).
  LETHE_CHECK(B <= 65535 && H <= 65535, op, ": batch ", B, " and ", H, " heads: at most 65535 each per launch");
  LETHE_CHECK(attention_supports_head_dim(D), op, ": head_dim ", D, " has no CUDA kernel (16, 32, 64, 128)");
  LETHE_CHECK(KV > 0 && H % KV == 0, op, ": ", H, " query heads are not a multiple of ", KV, " kv heads");
  LETHE_CHECK(T > 0 && T < (int64_t(1) << 31), op, ": sequence length ", T, " out of range");
}

AttentionForwardKernel g_forward_kernel = AttentionForwardKernel::wmma;
AttentionBackwardKernel g_backward_kernel = AttentionBackwardKernel::wmma;
}  // namespace

void set_attention_forward_kernel(AttentionForwardKernel k) { g_forward_kernel = k; }
AttentionForwardKernel attention_forward_kernel() { return g_forward_kernel; }
void set_attention_backward_kernel(AttentionBackwardKernel k) { g_backward_kernel = k; }
AttentionBackwardKernel attention_backward_kernel() { return g_backward_kernel; }

const char* attention_kernel_name(AttentionForwardKernel k) {
  return k == AttentionForwardKernel::mma ? "mma" : "wmma";
}
const char* attention_kernel_name(AttentionBackwardKernel k) {
  switch (k) {
    case AttentionBackwardKernel::mma: return "mma";
    case AttentionBackwardKernel::mma_deterministic: return "mma_deterministic";
    default: return "wmma";
  }
}

bool attention_supports_head_dim(int64_t D) { return D == 16 || D == 32 || D == 64 || D == 128; }

void attention_forward(const bf16* q, const bf16* k, const bf16* v, float scale, bf16* o, float* lse, int64_t B,
                       int64_t T, int64_t H, int64_t KV, int64_t D, Stream s) {
  if (B == 0) return;
  check_dims(B, T, H, KV, D, "attention_forward");
  if (g_forward_kernel == AttentionForwardKernel::mma) {
    detail::attention_forward_mma(q, k, v, scale, o, lse, B, T, H, KV, D, s);
    return;
  }
  with_head_dim(D, [&](auto d) {
    constexpr int kD = decltype(d)::value;
    set_smem_limits<kD>();
    const dim3 grid(unsigned((T + kBr - 1) / kBr), unsigned(H), unsigned(B));
    flash_fwd<kD><<<grid, kThreads, FwdSmem<kD>::bytes, as_stream(s)>>>(dev(q), dev(k), dev(v), scale * kLog2e,
                                                                       dev(o), lse, T, int(H), int(KV));
  });
  check_launch("attention_forward");
}

size_t attention_backward_workspace_bytes(int64_t B, int64_t T, int64_t H, int64_t D) {
  const size_t dq = size_t(B * T * H * D) * sizeof(float);
  return (dq + 255) / 256 * 256 + size_t(B * H * T) * sizeof(float);
}

void attention_backward(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                        const float* lse, float scale, bf16* dq, bf16* dk, bf16* dv, void* workspace, int64_t B,
                        int64_t T, int64_t H, int64_t KV, int64_t D, Stream s) {
  if (B == 0) return;
  check_dims(B, T, H, KV, D, "attention_backward");
  const size_t dq_bytes = size_t(B * T * H * D) * sizeof(float);
  float* dq_acc = static_cast<float*>(workspace);
  float* delta = reinterpret_cast<float*>(static_cast<char*>(workspace) + (dq_bytes + 255) / 256 * 256);
  if (g_backward_kernel != AttentionBackwardKernel::mma_deterministic) fill_bytes(dq_acc, 0, dq_bytes, s);
  const int64_t rows = B * T * H;
  delta_kernel<<<grid_for(rows * 32, 256, int64_t(1) << 30), 256, 0, as_stream(s)>>>(dev(dout), dev(o), delta, rows,
                                                                                   T, int(H), int(D));
  check_launch("attention_backward");
  if (g_backward_kernel != AttentionBackwardKernel::wmma) {
    detail::attention_backward_mma(dout, q, k, v, lse, delta, scale, dq_acc, dq, dk, dv,
                                   g_backward_kernel == AttentionBackwardKernel::mma_deterministic, B, T, H, KV, D,
                                   s);
    return;
  }
  with_head_dim(D, [&](auto d) {
    constexpr int kD = decltype(d)::value;
    set_smem_limits<kD>();
    const dim3 grid(unsigned((T + kBc - 1) / kBc), unsigned(KV), unsigned(B));
    flash_bwd<kD><<<grid, kThreads, BwdSmem<kD>::bytes, as_stream(s)>>>(dev(dout), dev(q), dev(k), dev(v), lse,
                                                                       delta, scale, dq_acc, dev(dk), dev(dv), T,
                                                                       int(H), int(KV));
  });
  check_launch("attention_backward");
  cast_f32_to_bf16(dq_acc, dq, B * T * H * D, s);
}

}  // namespace lethe::cuda
