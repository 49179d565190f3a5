#include "kernels/cuda/linear.h"

// cublasLt.h for its types and constants only: the library itself is opened with dlopen at
// the first GEMM (see lt() below), so a machine without libcublasLt still runs every kernel
// that is not a matrix product, and the GEMM path names the missing library.
#include <cublasLt.h>
#include <dlfcn.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "kernels/cuda/common.cuh"

#define LETHE_LT_CHECK(expr, op)                                                              \
  do {                                                                                       \
    cublasStatus_t st_ = (expr);                                                             \
    if (st_ != CUBLAS_STATUS_SUCCESS) LETHE_FAIL(op, ": cuBLASLt status ", int(st_), " (", #expr, ")"); \
  } while (0)

namespace lethe::cuda {
namespace {

#define LETHE_STR2(x) #x
#define LETHE_STR(x) LETHE_STR2(x)
// The soname of the cuBLASLt major version this file was compiled against.
constexpr const char* kLtSoname = "libcublasLt.so." LETHE_STR(CUBLAS_VER_MAJOR);

// The cuBLASLt functions this file calls, resolved from the library at first use.
struct LtApi {
  decltype(&::cublasLtCreate) Create = nullptr;
  decltype(&::cublasLtDestroy) Destroy = nullptr;
  decltype(&::cublasLtMatmulDescCreate) MatmulDescCreate = nullptr;
  decltype(&::cublasLtMatmulDescDestroy) MatmulDescDestroy = nullptr;
  decltype(&::cublasLtMatmulDescSetAttribute) MatmulDescSetAttribute = nullptr;
  decltype(&::cublasLtMatrixLayoutCreate) MatrixLayoutCreate = nullptr;
  decltype(&::cublasLtMatrixLayoutDestroy) MatrixLayoutDestroy = nullptr;
  decltype(&::cublasLtMatmulPreferenceCreate) MatmulPreferenceCreate = nullptr;
  decltype(&::cublasLtMatmulPreferenceDestroy) MatmulPreferenceDestroy = nullptr;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) MatmulPreferenceSetAttribute = nullptr;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) MatmulAlgoGetHeuristic = nullptr;
  decltype(&::cublasLtMatmul) Matmul = nullptr;
  std::string error;  // why loading failed; empty once loaded
};

// The directory of the CUDA runtime this process uses: a toolkit keeps cuBLASLt beside it,
// which covers a toolkit outside the loader's search path.
std::string cudart_dir() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) || !info.dli_fname) return {};
  const std::string f = info.dli_fname;
  const auto slash = f.rfind('/');
  return slash == std::string::npos ? std::string() : f.substr(0, slash + 1);
}

LtApi load_lt() {
  LtApi api;
  void* h = dlopen(kLtSoname, RTLD_NOW | RTLD_LOCAL);
  std::string why = h ? std::string() : std::string(dlerror());
  if (!h) {
    const std::string dir = cudart_dir();
    if (!dir.empty()) h = dlopen((dir + kLtSoname).c_str(), RTLD_NOW | RTLD_LOCAL);
  }
  if (!h) {
    api.error = std::string("cannot load ") + kLtSoname + " (" + why +
                "): the matrix products need cuBLASLt from a CUDA " LETHE_STR(CUBLAS_VER_MAJOR) " toolkit or "
                "the nvidia-cublas wheel; put its directory on LD_LIBRARY_PATH";
    return api;
  }
  // Never dlclose'd: the handles and descriptors live until the process ends.
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
    if (!fn && api.error.empty()) api.error = std::string(kLtSoname) + " has no symbol " + name;
  };
  sym(api.Create, "cublasLtCreate");
  sym(api.Destroy, "cublasLtDestroy");
  sym(api.MatmulDescCreate, "cublasLtMatmulDescCreate");
  sym(api.MatmulDescDestroy, "cublasLtMatmulDescDestroy");
  sym(api.MatmulDescSetAttribute, "cublasLtMatmulDescSetAttribute");
  sym(api.MatrixLayoutCreate, "cublasLtMatrixLayoutCreate");
  sym(api.MatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy");
  sym(api.MatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate");
  sym(api.MatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy");
  sym(api.MatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
  sym(api.MatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(api.Matmul, "cublasLtMatmul");
  return api;
}

// Loaded once per process; throws lethe::Error naming the library when it cannot be used.
const LtApi& lt(const char* op) {
  static std::once_flag once;
  static LtApi api;
  std::call_once(once, [] { api = load_lt(); });
  if (!api.error.empty()) LETHE_FAIL(op, ": ", api.error);
  return api;
}

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

// The cuBLASLt handle is made by the first product, so creating a context (a step's setup)
// needs no cuBLASLt yet.
GemmContext* gemm_create(size_t workspace_bytes) {
  auto* g = new GemmContext;
  g->workspace_bytes = workspace_bytes;
  g->workspace = workspace_bytes ? device_malloc(workspace_bytes) : nullptr;
  return g;
}

void gemm_destroy(GemmContext* g) {
  if (!g) return;
  if (g->handle) {  // plans exist only once the library was loaded and the handle made
    const LtApi& api = lt("gemm_destroy");
    for (auto& [k, p] : g->plans) {
      api.MatrixLayoutDestroy(p.a);
      api.MatrixLayoutDestroy(p.b);
      api.MatrixLayoutDestroy(p.c);
      api.MatmulDescDestroy(p.desc);
    }
    api.Destroy(g->handle);
  }
  device_free(g->workspace);
  delete g;
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt gets B as its
// first operand and A as its second, each with its own transpose flag, and no copy.
void gemm_bf16(GemmContext* g, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
               int64_t lda, const bf16* B, int64_t ldb, float beta, void* C, bool c_f32, int64_t ldc, Stream s) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = beta C, which cuBLASLt need not (and may refuse to) do
    LETHE_CHECK(beta == 0.f || beta == 1.f, "gemm_bf16: K = 0 with beta ", beta);
    const size_t es = c_f32 ? 4 : 2;
    if (beta == 0.f)
      LETHE_CUDA_CHECK(cudaMemset2DAsync(C, size_t(ldc) * es, 0, size_t(N) * es, size_t(M), as_stream(s)),
                       "gemm_bf16 (K = 0)");
    return;
  }
  const LtApi& api = lt("gemm_bf16");
  if (!g->handle) LETHE_LT_CHECK(api.Create(&g->handle), "gemm_bf16 (cublasLtCreate)");
  const int align = std::min({alignment_of(A), alignment_of(B), alignment_of(C)});
  const PlanKey key{ta, tb, M, N, K, lda, ldb, ldc, c_f32, align};
  auto it = g->plans.find(key);
  if (it == g->plans.end()) {
    Plan p;
    LETHE_LT_CHECK(api.MatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "gemm_bf16");
    const cublasOperation_t op1 = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    LETHE_LT_CHECK(api.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)), "gemm_bf16");
    LETHE_LT_CHECK(api.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)), "gemm_bf16");
    // Stored shapes (column-major view of the row-major buffers), before the transposes.
    LETHE_LT_CHECK(api.MatrixLayoutCreate(&p.a, CUDA_R_16BF, tb ? K : N, tb ? N : K, ldb), "gemm_bf16");
    LETHE_LT_CHECK(api.MatrixLayoutCreate(&p.b, CUDA_R_16BF, ta ? M : K, ta ? K : M, lda), "gemm_bf16");
    LETHE_LT_CHECK(api.MatrixLayoutCreate(&p.c, c_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, ldc), "gemm_bf16");
    cublasLtMatmulPreference_t pref = nullptr;
    LETHE_LT_CHECK(api.MatmulPreferenceCreate(&pref), "gemm_bf16");
    const uint64_t ws = g->workspace_bytes;
    const uint32_t al = uint32_t(align);
    api.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      api.MatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al));
    // Split-K partial sums only in fp32 (the compute type), never in the bf16 output or in
    // place in it: the emulation rounds each product once, from an fp32 sum.
    const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    api.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
                                     sizeof(reduction));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        api.MatmulAlgoGetHeuristic(g->handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
    api.MatmulPreferenceDestroy(pref);
    LETHE_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "gemm_bf16: cuBLASLt has no algorithm for M=", M, " N=", N,
                " K=", K, " (status ", int(st), ", alignment ", align, " bytes)");
    p.algo = res.algo;
    it = g->plans.emplace(key, p).first;
  }
  const Plan& p = it->second;
  LETHE_LT_CHECK(api.Matmul(g->handle, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo,
                                g->workspace, g->workspace_bytes, as_stream(s)),
                 "gemm_bf16");
  // cuBLASLt reports success for a kernel that faults later; debug mode waits here so the
  // fault is named after the product, not after the next kernel.
  check_launch("gemm_bf16");
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
