#include "kernels/cuda/sample.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
constexpr int kThreads = 512;

__device__ __forceinline__ double term(const __nv_bfloat16* x, int64_t j, double m) {
  return exp(double(to_f(x[j])) - m);
}

// Each thread sums a contiguous segment of the row; thread 0 walks the segment totals in
// order to find the one where the running sum passes the target; that segment's thread
// walks its columns from the running sum before it.
__global__ void inverse_cdf_rows(const __nv_bfloat16* __restrict__ logits, const float* __restrict__ rowmax,
                                 const double* __restrict__ target, int64_t first, int32_t* __restrict__ arg,
                                 int64_t V) {
  __shared__ double part[kThreads];
  __shared__ int owner;
  __shared__ double before;
  const int64_t row = blockIdx.x;
  const double t = target[row];
  if (!(t >= 0)) {  // the same for the whole block
    if (threadIdx.x == 0) arg[row] = -1;
    return;
  }
  const __nv_bfloat16* x = logits + row * V;
  const double m = double(rowmax[row]);
  const int64_t len = (V + blockDim.x - 1) / blockDim.x;
  const int64_t c0 = min(V, int64_t(threadIdx.x) * len), c1 = min(V, c0 + len);
  double s = 0;
  for (int64_t c = c0; c < c1; ++c) s += term(x, c, m);
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double acc = 0;
    int k = 0;
    for (; k < int(blockDim.x); ++k) {
      if (acc + part[k] > t) break;
      acc += part[k];
    }
    owner = k;
    before = acc;
    if (k == int(blockDim.x)) arg[row] = int32_t(first + V - 1);
  }
  __syncthreads();
  if (int(threadIdx.x) != owner) return;
  double acc = before;
  int64_t c = c0;
  for (; c < c1; ++c)
    if ((acc += term(x, c, m)) > t) break;
  arg[row] = int32_t(first + min(c, c1 - 1));
}

// (value, column) ordered most likely first, ties by smaller column; NaN as -inf.
__device__ __forceinline__ bool before(float va, int64_t ja, float vb, int64_t jb) {
  return va > vb || (va == vb && ja < jb);
}

__global__ void topk_rows(const __nv_bfloat16* __restrict__ logits, int64_t first, float* __restrict__ values,
                          int32_t* __restrict__ ids, int64_t V, int64_t K) {
  __shared__ float sv[32];
  __shared__ int64_t sj[32];
  __shared__ float pick_v;
  __shared__ int64_t pick_j;
  const int64_t row = blockIdx.x, none = INT64_MAX;
  const __nv_bfloat16* x = logits + row * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  auto reduce = [](float& v, int64_t& j) {
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int64_t oj = __shfl_xor_sync(0xffffffffu, j, o);
      if (oj != INT64_MAX && (j == INT64_MAX || before(ov, oj, v, j))) v = ov, j = oj;
    }
  };
  // The previous pick (+inf before the first): each pass takes the best entry after it.
  float pv = INFINITY;
  int64_t pj = -1;
  for (int64_t r = 0; r < K; ++r) {
    float v = -INFINITY;
    int64_t j = none;
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
      float xc = to_f(x[c]);
      if (isnan(xc)) xc = -INFINITY;
      if (before(pv, pj, xc, c) && (j == none || before(xc, c, v, j))) v = xc, j = c;
    }
    reduce(v, j);
    if (lane == 0) sv[warp] = v, sj[warp] = j;
    __syncthreads();
    if (warp == 0) {
      v = lane < nw ? sv[lane] : -INFINITY;
      j = lane < nw ? sj[lane] : none;
      reduce(v, j);
      if (lane == 0) pick_v = v, pick_j = j;
    }
    __syncthreads();
    pv = pick_v;
    pj = pick_j;
    if (pj == none) {  // the shard has fewer than K columns: pad the rest
      for (int64_t q = r + threadIdx.x; q < K; q += blockDim.x) values[row * K + q] = -INFINITY, ids[row * K + q] = -1;
      return;
    }
    if (threadIdx.x == 0) values[row * K + r] = pv, ids[row * K + r] = int32_t(first + pj);
  }
}
}  // namespace

void inverse_cdf_shard(const bf16* logits, const float* rowmax, const double* target, int64_t first, int32_t* arg,
                       int64_t N, int64_t V, Stream s) {
  if (N == 0) return;
  inverse_cdf_rows<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), rowmax, target, first, arg, V);
  check_launch("inverse_cdf_shard");
}

void topk_shard(const bf16* logits, int64_t first, float* values, int32_t* ids, int64_t N, int64_t V, int64_t K,
                Stream s) {
  if (N == 0 || K == 0) return;
  topk_rows<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), first, values, ids, V, K);
  check_launch("topk_shard");
}

}  // namespace lethe::cuda
