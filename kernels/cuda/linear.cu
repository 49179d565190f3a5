#include "kernels/cuda/linear.h"

#include <cublasLt.h>

#include <map>
#include <tuple>

#include "kernels/cuda/common.cuh"

#define LETHE_LT_CHECK(expr, op)                                                              \
  do {                                                                                       \
    cublasStatus_t st_ = (expr);                                                             \
    if (st_ != CUBLAS_STATUS_SUCCESS) LETHE_FAIL(op, ": cuBLASLt status ", int(st_), " (", #expr, ")"); \
  } while (0)

namespace lethe::cuda {
namespace {
// Everything the descriptors and the algorithm choice depend on.
using PlanKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, int>;

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

int alignment_of(const void* p) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 2 && u % uintptr_t(a) != 0) a >>= 1;
  return a;
}
}  // namespace

struct GemmContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<PlanKey, Plan> plans;
};

GemmContext* gemm_create(size_t workspace_bytes) {
  auto* g = new GemmContext;
  LETHE_LT_CHECK(cublasLtCreate(&g->handle), "gemm_create");
  g->workspace_bytes = workspace_bytes;
  g->workspace = workspace_bytes ? device_malloc(workspace_bytes) : nullptr;
  return g;
}

void gemm_destroy(GemmContext* g) {
  if (!g) return;
  for (auto& [k, p] : g->plans) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  device_free(g->workspace);
  cublasLtDestroy(g->handle);
  delete g;
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt gets B as its
// first operand and A as its second, each with its own transpose flag, and no copy.
void gemm_bf16(GemmContext* g, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
               int64_t lda, const bf16* B, int64_t ldb, float beta, void* C, bool c_f32, int64_t ldc, Stream s) {
  if (M == 0 || N == 0) return;
  const int align = std::min({alignment_of(A), alignment_of(B), alignment_of(C)});
  const PlanKey key{ta, tb, M, N, K, lda, ldb, ldc, c_f32, align};
  auto it = g->plans.find(key);
  if (it == g->plans.end()) {
    Plan p;
    LETHE_LT_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "gemm_bf16");
    const cublasOperation_t op1 = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    LETHE_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)), "gemm_bf16");
    LETHE_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)), "gemm_bf16");
    // Stored shapes (column-major view of the row-major buffers), before the transposes.
    LETHE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, tb ? K : N, tb ? N : K, ldb), "gemm_bf16");
    LETHE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, ta ? M : K, ta ? K : M, lda), "gemm_bf16");
    LETHE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, c_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, ldc), "gemm_bf16");
    cublasLtMatmulPreference_t pref = nullptr;
    LETHE_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref), "gemm_bf16");
    const uint64_t ws = g->workspace_bytes;
    const uint32_t al = uint32_t(align);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(g->handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    LETHE_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "gemm_bf16: cuBLASLt has no algorithm for M=", M, " N=", N,
                " K=", K, " (status ", int(st), ", alignment ", align, " bytes)");
    p.algo = res.algo;
    it = g->plans.emplace(key, p).first;
  }
  const Plan& p = it->second;
  LETHE_LT_CHECK(cublasLtMatmul(g->handle, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo,
                                g->workspace, g->workspace_bytes, as_stream(s)),
                 "gemm_bf16");
}

void linear_forward(GemmContext* g, const bf16* x, const bf16* w, bf16* y, int64_t N, int64_t in, int64_t out,
                    Stream s) {
  gemm_bf16(g, false, true, N, out, in, 1.f, x, in, w, in, 0.f, y, false, out, s);
}

void linear_backward(GemmContext* g, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, bool accumulate_dx,
                     float* dw, int64_t N, int64_t in, int64_t out, Stream s) {
  if (dx) gemm_bf16(g, false, false, N, in, out, 1.f, dy, out, w, in, accumulate_dx ? 1.f : 0.f, dx, false, in, s);
  if (dw && N > 0) gemm_bf16(g, true, false, out, in, N, 1.f, dy, out, x, in, 1.f, dw, true, in, s);
}

}  // namespace lethe::cuda
