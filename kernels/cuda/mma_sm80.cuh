// Internal to kernels/cuda: the Ampere-and-later tensor-core building blocks the attention
// kernels are written in (PTX ISA 7.0+, sm_80+): mma.sync m16n8k16 bf16 -> fp32, ldmatrix,
// and cp.async with zero fill. Every shared-memory access here is also a compiler memory
// barrier ("memory" clobber), so no ordinary load or store is moved across one of them.
//
// Fragment layouts of m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 g + t:
//   A (16 x 16, row-major): a0 (row g, cols 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B (16 x 8, k x n):      b0 (k 2t..2t+1, col g), b1 (k 2t+8..2t+9, col g)
//   C (16 x 8, fp32):       c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1)
// ldmatrix.x4 loads four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of
// matrix i, and register i of lane (g, t) receives row g, columns 2t..2t+1 of matrix i
// (with .trans: rows 2t and 2t+1 of column g, i.e. the transpose's row g). So one x4 load
// of a 16x16 row-major tile whose matrix i sits at rows 8 (i & 1), cols 8 (i >> 1) is an A
// fragment; of [n][k]-stored B (K for Q K^T) at rows 8 (i >> 1), cols 8 (i & 1) it is the
// B fragments of two n-tiles; with .trans on [k][n]-stored B (V for P V) at rows 8 (i & 1),
// cols 8 (i >> 1) it is again two n-tiles' B fragments. The accumulators of two adjacent
// 8-column C tiles, packed to bf16, are exactly the A fragment of one 16-deep k step.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace lethe::cuda::mma {

__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (the low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// 16 bytes global -> shared, bypassing L1. `valid` false writes 16 zero bytes and reads
// nothing (src-size 0), which is how rows past the sequence's end become zeros; `src`
// must still be a mapped address.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// rows x D bf16 from global rows t0.. (row stride `stride` elements) into shared rows of
// `ld` elements, 16 bytes per cp.async, every thread of a kThreads block taking its share;
// rows at or past T are zero-filled. The trip count is a compile-time constant, so the
// copies of one thread are issued back to back without waiting for one another.
template <int D, int kRows, int kThreads>
__device__ __forceinline__ void cp_async_rows(uint32_t dst, int ld, const __nv_bfloat16* src, int64_t stride,
                                              int64_t t0, int64_t T) {
  constexpr int kVec = D / 8, kChunks = kRows * kVec;
#pragma unroll
  for (int i = 0; i < (kChunks + kThreads - 1) / kThreads; ++i) {
    const int idx = int(threadIdx.x) + i * kThreads;
    if (kChunks % kThreads != 0 && idx >= kChunks) break;
    const int r = idx / kVec, c = (idx % kVec) * 8;
    const bool valid = t0 + r < T;
    const __nv_bfloat16* g = src + (valid ? (t0 + r) * stride : 0) + c;
    cp_async16(dst + uint32_t((r * ld + c) * 2), g, valid);
  }
}

}  // namespace lethe::cuda::mma
