// Matrix products through cuBLASLt: bf16 inputs, fp32 accumulation, bf16 or fp32 outputs
// (weight gradients accumulate in fp32). Row-major throughout, weights as W[out, in].
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// cuBLASLt handle, its workspace (allocated once here, never in a step) and the chosen
// algorithm per problem shape, so a step pays the heuristic query only on its first run.
struct GemmContext;
GemmContext* gemm_create(size_t workspace_bytes = size_t(32) << 20);
void gemm_destroy(GemmContext* g);

// C[M, N] = alpha * op(A) op(B) + beta * C, row-major; op(A) is [M, K], op(B) is [K, N].
// C is fp32 when c_f32, else bf16.
void gemm_bf16(GemmContext* g, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta, void* C, bool c_f32, int64_t ldc,
               Stream s = nullptr);

// y[N, out] = x[N, in] W^T.
void linear_forward(GemmContext* g, const bf16* x, const bf16* w, bf16* y, int64_t N, int64_t in, int64_t out,
                    Stream s = nullptr);
// dx[N, in] = dy W (added when accumulate_dx); dw[out, in] (fp32) += dy^T x. Either may be null.
void linear_backward(GemmContext* g, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, bool accumulate_dx,
                     float* dw, int64_t N, int64_t in, int64_t out, Stream s = nullptr);

}  // namespace lethe::cuda
