#include "kernels/cuda/optim.h"

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
// Tensors per launch: the table rides in the kernel's parameter space (4 KB limit on
// older toolkits), 56 bytes an entry.
constexpr int kBatch = 48;
// Blocks per tensor: at least 96, and enough for a launch of few tensors (the engine passes
// one at a time) to fill the GPU: about 1024 blocks of 256 threads in all, 8 per SM of an
// H100, so that the loads in flight can saturate its memory (the update is memory-bound).
constexpr int kBlocksPerTensor = 96;
constexpr int kBlocksPerLaunch = 1024;

struct AdamWBatch {
  AdamWTensor t[kBatch];
};

// The CPU twin's arithmetic (kernels/cpu/optim.cpp) operation by operation: each f32
// multiply, add, divide and square root rounded on its own and in its order (nvcc would
// otherwise fuse multiply-adds), decay = f32(1 - lr wd) from doubles. The update is then
// ops::adamw_update bit for bit.
__global__ void adamw_kernel(AdamWBatch batch, double lr, float b1, float b2, float eps, float step_size, float bc2s,
                             const float* grad_scale) {
  const AdamWTensor& t = batch.t[blockIdx.y];
  const float gs = grad_scale ? *grad_scale : 1.f;
  const float decay = float(__dsub_rn(1.0, __dmul_rn(lr, t.weight_decay)));  // no fused multiply-add
  const float omb1 = __fsub_rn(1.f, b1), omb2 = __fsub_rn(1.f, b2);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < t.n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad_scale ? __fmul_rn(t.grad[i], gs) : t.grad[i];
    float p = __fmul_rn(t.master[i], decay);
    const float m = __fadd_rn(__fmul_rn(b1, t.m[i]), __fmul_rn(omb1, g));
    const float v = __fadd_rn(__fmul_rn(b2, t.v[i]), __fmul_rn(__fmul_rn(omb2, g), g));
    p = __fsub_rn(p, __fdiv_rn(__fmul_rn(step_size, m), __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2s), eps)));
    t.m[i] = m;
    t.v[i] = v;
    t.master[i] = p;
    if (t.param) reinterpret_cast<__nv_bfloat16*>(t.param)[i] = to_bf(p);
  }
}

// Block b owns partials[b] across every tensor: launches run in stream order, so the
// additions happen in a fixed order without atomics.
__global__ void sumsq_kernel(const float* __restrict__ x, int64_t n, double* partials, bool first) {
  __shared__ double scratch[32];
  double s = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s += double(x[i]) * double(x[i]);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = first ? s : partials[blockIdx.x] + s;
}
__global__ void sum_partials(const double* __restrict__ partials, int n, double* out) {
  __shared__ double scratch[32];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = s;
}
// A non-finite norm gives a NaN coefficient, as torch's clamp keeps it (fmin would return
// 1 and let the update through unclipped).
__global__ void clip_kernel(const double* sumsq, float max_norm, float* coef, float* norm) {
  const double nrm = sqrt(*sumsq);
  if (norm) *norm = float(nrm);
  if (max_norm <= 0) *coef = 1.f;
  else *coef = isfinite(nrm) ? float(fmin(1.0, double(max_norm) / (nrm + 1e-6))) : NAN;
}
// The CPU twin's f32 arithmetic, each operation rounded on its own (no fused multiply-add,
// which nvcc would otherwise form), so the update is bit for bit the CPU's.
__global__ void sgd_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf, int64_t n,
                           float lr, float mu, float wd, bool first) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float d = __fadd_rn(g[i], __fmul_rn(wd, p[i]));
    if (buf) d = buf[i] = first ? d : __fadd_rn(__fmul_rn(mu, buf[i]), d);
    p[i] = __fsub_rn(p[i], __fmul_rn(lr, d));
  }
}
__global__ void scale_kernel(float* x, int64_t n, float a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= a;
}
}  // namespace

void adamw_multi(const AdamWTensor* tensors, int count, const AdamWHyper& h, const float* grad_scale, Stream s) {
  LETHE_CHECK(h.step >= 1, "adamw_multi: step must be >= 1, got ", h.step);
  const double bc1 = 1 - std::pow(h.beta1, double(h.step));
  const double bc2s = std::sqrt(1 - std::pow(h.beta2, double(h.step)));
  for (int i0 = 0; i0 < count; i0 += kBatch) {
    AdamWBatch b{};
    const int n = std::min(kBatch, count - i0);
    int64_t largest = 0;
    for (int i = 0; i < n; ++i) {
      b.t[i] = tensors[i0 + i];
      largest = std::max(largest, b.t[i].n);
    }
    const unsigned per = unsigned(std::max(kBlocksPerTensor, (kBlocksPerLaunch + n - 1) / n));
    const dim3 grid(std::min<unsigned>(per, grid_for(largest, 256)), unsigned(n));
    adamw_kernel<<<grid, 256, 0, as_stream(s)>>>(b, h.lr, float(h.beta1), float(h.beta2), float(h.eps),
                                                 float(h.lr / bc1), float(bc2s), grad_scale);
    check_launch("adamw_multi");
  }
}

void sum_squares_multi(const float* const* tensors, const int64_t* sizes, int count, double* partials, double* sumsq,
                       Stream s) {
  if (count == 0) {
    fill_bytes(sumsq, 0, sizeof(double), s);
    return;
  }
  for (int i = 0; i < count; ++i) {
    sumsq_kernel<<<kNormPartials, 256, 0, as_stream(s)>>>(tensors[i], sizes[i], partials, i == 0);
    check_launch("sum_squares_multi");
  }
  sum_partials<<<1, 1024, 0, as_stream(s)>>>(partials, kNormPartials, sumsq);
  check_launch("sum_squares_multi");
}

void clip_coefficient(const double* sumsq, float max_norm, float* coef, float* norm, Stream s) {
  clip_kernel<<<1, 1, 0, as_stream(s)>>>(sumsq, max_norm, coef, norm);
  check_launch("clip_coefficient");
}

void sgd_update(float* p, const float* g, float* buf, int64_t n, float lr, float momentum, float weight_decay,
                bool first_step, Stream s) {
  if (n <= 0) return;
  sgd_kernel<<<grid_for(n, 256), 256, 0, as_stream(s)>>>(p, g, buf, n, lr, momentum, weight_decay, first_step);
  check_launch("sgd_update");
}

void scale(float* x, int64_t n, float a, Stream s) {
  if (n <= 0) return;
  scale_kernel<<<grid_for(n, 256), 256, 0, as_stream(s)>>>(x, n, a);
  check_launch("scale");
}

}  // namespace lethe::cuda
