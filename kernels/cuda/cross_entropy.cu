#include "kernels/cuda/cross_entropy.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
constexpr int kThreads = 512;

__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return to_f(p[i]); }
__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }

template <typename T>
__device__ MaxSum row_stats(const T* x, int64_t V, float* scratch) {
  MaxSum st;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) st = merge(st, MaxSum{load(x, j), 1.f});
  return block_merge(st, scratch);
}

// The bf16 row kernels take kVec adjacent elements per access: 8 is one 16-byte load or
// store, which needs every row to start on a 16-byte boundary (V % 8 == 0 and aligned
// buffers: vocabularies and their tp shards almost always are); 1 serves every other row.
// The host picks (vec_rows). Column indices are 64-bit: with 32-bit ones nvcc splits the
// 16-byte stores.
inline bool vec_rows(int64_t V, std::initializer_list<const void*> ps) { return V % 8 == 0 && aligned16(ps); }

// Calls f(j, x[j]) for this thread's elements of the row, kVec at a time.
template <int kVec, typename F>
__device__ __forceinline__ void each(const __nv_bfloat16* x, int64_t V, F f) {
  for (int64_t i = threadIdx.x * int64_t(kVec); i < V; i += int64_t(blockDim.x) * kVec) {
    const Vec<kVec> v = ld<kVec>(x + i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) f(i + k, to_f(v.v[k]));
  }
}
// g[j] = f(j, x[j]) for this thread's elements. g may be x itself: each element is read
// and then written by the same thread.
template <int kVec, typename F>
__device__ __forceinline__ void map(const __nv_bfloat16* x, __nv_bfloat16* g, int64_t V, F f) {
  for (int64_t i = threadIdx.x * int64_t(kVec); i < V; i += int64_t(blockDim.x) * kVec) {
    const Vec<kVec> v = ld<kVec>(x + i);
    Vec<kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o.v[k] = to_bf(f(i + k, to_f(v.v[k])));
    st<kVec>(g + i, o);
  }
}
template <int kVec>
__device__ __forceinline__ void zero_row(__nv_bfloat16* g, int64_t V) {
  Vec<kVec> z;
#pragma unroll
  for (int k = 0; k < kVec; ++k) z.v[k] = to_bf(0.f);
  for (int64_t i = threadIdx.x * int64_t(kVec); i < V; i += int64_t(blockDim.x) * kVec) st<kVec>(g + i, z);
}

// The softmax state of kVec values at once: one exp per value and one merge per access,
// where merging value by value takes two exps per value. Same special cases as merge: a
// NaN makes the state NaN, all -inf gives (-inf, 0), +inf gives a NaN sum.
template <int kVec>
__device__ __forceinline__ MaxSum stats_of(const Vec<kVec>& v) {
  float f[kVec], m = -INFINITY;
  bool nan = false;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    f[k] = to_f(v.v[k]);
    m = fmaxf(m, f[k]);
    nan |= isnan(f[k]);
  }
  if (nan) return {NAN, NAN};
  if (m == -INFINITY) return {m, 0.f};
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) s += __expf(f[k] - m);
  return {m, s};
}
template <int kVec>
__device__ MaxSum row_stats_bf16(const __nv_bfloat16* x, int64_t V, float* scratch) {
  MaxSum st;
  for (int64_t i = threadIdx.x * int64_t(kVec); i < V; i += int64_t(blockDim.x) * kVec) {
    if constexpr (kVec == 1) st = merge(st, MaxSum{to_f(x[i]), 1.f});  // stats_of would add an exp
    else st = merge(st, stats_of<kVec>(ld<kVec>(x + i)));
  }
  return block_merge(st, scratch);
}

template <int kVec>
__global__ void ce_fwd(const __nv_bfloat16* logits, const int32_t* __restrict__ targets,
                       const float* __restrict__ weights, float* __restrict__ logprobs, float* __restrict__ lse_out,
                       __nv_bfloat16* dlogits, float dloss, int64_t V) {
  __shared__ float scratch[64];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = logits + row * V;
  const int32_t t = targets[row];
  const bool valid = t != kIgnoreIndex && t >= 0 && t < V;
  // Read before any thread can overwrite the row (dlogits may alias logits); the
  // barriers inside block_merge order it.
  const float xt = valid ? to_f(x[t]) : 0.f;
  const MaxSum st = row_stats_bf16<kVec>(x, V, scratch);
  const float lse = st.m + __logf(st.s);
  if (threadIdx.x == 0) {
    lse_out[row] = lse;
    logprobs[row] = valid ? xt - lse : (t == kIgnoreIndex ? 0.f : NAN);
  }
  if (!dlogits) return;
  __nv_bfloat16* g = dlogits + row * V;
  // Ignored and zero-weight rows get exact zeros, as the CPU twin writes them (0 * (p -
  // onehot) would be NaN where a logit is infinite or NaN, and -0 at the target).
  if (!valid || weights[row] == 0.f) return zero_row<kVec>(g, V);
  const float a = dloss * weights[row];
  map<kVec>(x, g, V, [&](int64_t j, float xj) { return a * (__expf(xj - lse) - (j == t ? 1.f : 0.f)); });
}

// Over a shard of ids [first, first + V) of `vocab`: the onehot only where the shard holds
// the target (first = 0, V = vocab: the whole vocabulary).
template <int kVec>
__global__ void ce_bwd(const __nv_bfloat16* logits, const int32_t* __restrict__ targets,
                       const float* __restrict__ weights, const float* __restrict__ lse_in, float dloss,
                       __nv_bfloat16* dlogits, int64_t first, int64_t V, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const int32_t t = targets[row];
  const bool valid = t != kIgnoreIndex && t >= 0 && t < vocab;
  const int64_t r = int64_t(t) - first;
  __nv_bfloat16* g = dlogits + row * V;
  if (!valid || weights[row] == 0.f) return zero_row<kVec>(g, V);  // exact zeros, as the CPU twin (see ce_fwd)
  const float a = dloss * weights[row], lse = lse_in[row];
  map<kVec>(logits + row * V, g, V, [&](int64_t j, float xj) { return a * (__expf(xj - lse) - (j == r ? 1.f : 0.f)); });
}

// The vocabulary-parallel statistics of one row: its maximum and the target's logit where
// this shard holds it (0 elsewhere, so the group's sum is the logit).
template <int kVec>
__global__ void shard_max_rows(const __nv_bfloat16* __restrict__ logits, const int32_t* __restrict__ targets,
                               float* __restrict__ rowmax, float* __restrict__ target_logit, int64_t first, int64_t V) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = logits + row * V;
  float m = -INFINITY;
  each<kVec>(x, V, [&](int64_t, float xj) { m = fmaxf(m, xj); });
  m = block_max(m, scratch);
  if (threadIdx.x != 0) return;
  rowmax[row] = m;
  if (!targets) return;
  const int32_t t = targets[row];
  const int64_t r = int64_t(t) - first;
  target_logit[row] = (t != kIgnoreIndex && r >= 0 && r < V) ? to_f(x[r]) : 0.f;
}

// sum_j exp(x_j - max) in double, the difference in f32 or in double (the CPU twin's
// arithmetic either way).
template <int kVec>
__global__ void shard_sumexp_rows(const __nv_bfloat16* __restrict__ logits, const float* __restrict__ rowmax,
                                  double* __restrict__ sumexp, bool difference_in_double, int64_t V) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = logits + row * V;
  const float m = rowmax[row];
  double s = 0;
  each<kVec>(x, V, [&](int64_t, float xj) { s += exp(difference_in_double ? double(xj) - double(m) : double(xj - m)); });
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) sumexp[row] = s;
}

// The Min-K%++ moment of one row over a shard (kernels/cross_entropy.h), in double.
__global__ void moment_rows(const __nv_bfloat16* __restrict__ logits, const float* __restrict__ rowmax,
                            const double* __restrict__ sumexp, const double* __restrict__ center,
                            double* __restrict__ out, int64_t V) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = logits + row * V;
  const double m = double(rowmax[row]), s = sumexp[row], lse = m + log(s);
  double acc = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const double xj = double(to_f(x[j])), p = exp(xj - m), l = xj - lse;
    acc += center ? p / s * (l - center[row]) * (l - center[row]) : p / s * l;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[row] = acc;
}

// The row's largest logit and the first column holding it, skipping one global id.
// Candidates merge as (larger value, then smaller column): the CPU's first-max scan.
__device__ __forceinline__ void better(float& v, int64_t& j, float ov, int64_t oj) {
  if (ov > v || (ov == v && oj < j)) v = ov, j = oj;
}
__global__ void argmax_rows(const __nv_bfloat16* __restrict__ logits, const int32_t* __restrict__ exclude,
                            int64_t first, float* __restrict__ best, int32_t* __restrict__ arg, int64_t V) {
  __shared__ float sv[32];
  __shared__ int64_t sj[32];
  const int64_t row = blockIdx.x, none = INT64_MAX;
  const __nv_bfloat16* x = logits + row * V;
  const int64_t skip = exclude ? int64_t(exclude[row]) - first : -1;
  float v = -INFINITY;
  int64_t j = none;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x)
    if (c != skip && to_f(x[c]) > v) v = to_f(x[c]), j = c;
  for (int o = 16; o > 0; o >>= 1) better(v, j, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, j, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  if (lane == 0) sv[warp] = v, sj[warp] = j;
  __syncthreads();
  if (warp != 0) return;
  v = lane < nw ? sv[lane] : -INFINITY;
  j = lane < nw ? sj[lane] : none;
  for (int o = 16; o > 0; o >>= 1) better(v, j, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, j, o));
  if (lane == 0) {
    best[row] = j == none ? -INFINITY : v;
    arg[row] = j == none ? -1 : int32_t(first + j);
  }
}

// KL(q || p) over a shard given the whole vocabulary's log-sum-exps (the CPU twin's
// arithmetic: differences, exps and the row sum in double; the gradient formed in double
// and stored through f32, as the CPU twin's f32 result is stored in bf16).
// logits carries no __restrict__: dlogits may alias it (each element is read by the thread
// that then writes it).
template <int kVec>
__global__ void kl_shard_rows(const __nv_bfloat16* __restrict__ ref, const __nv_bfloat16* logits,
                              const double* __restrict__ lse_q, const double* __restrict__ lse_p,
                              const double* __restrict__ row_weight, double grad_scale, double* __restrict__ kl,
                              __nv_bfloat16* dlogits, int64_t V) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const double w = row_weight[row];
  __nv_bfloat16* g = dlogits ? dlogits + row * V : nullptr;
  if (w == 0.0) {
    if (g) zero_row<kVec>(g, V);
    if (threadIdx.x == 0) kl[row] = 0.0;
    return;
  }
  const __nv_bfloat16 *x = logits + row * V, *r = ref + row * V;
  const double lsq = lse_q[row], lsp = lse_p[row], a = grad_scale * w;
  double acc = 0;
  for (int64_t i = threadIdx.x * int64_t(kVec); i < V; i += int64_t(blockDim.x) * kVec) {
    const Vec<kVec> xv = ld<kVec>(x + i), rv = ld<kVec>(r + i);
    Vec<kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const double lq = double(to_f(rv.v[k])) - lsq, lp = double(to_f(xv.v[k])) - lsp;
      const double q = exp(lq);
      if (q > 0) acc += q * (lq - lp);
      if (g) o.v[k] = to_bf(float(a * (exp(lp) - q)));
    }
    if (g) st<kVec>(g + i, o);
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) kl[row] = acc;
}

__global__ void add_at_targets_rows(__nv_bfloat16* __restrict__ x, const int32_t* __restrict__ targets,
                                   int64_t first, float value, int64_t N, int64_t V) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = int64_t(targets[i]) - first;
    if (targets[i] != kIgnoreIndex && c >= 0 && c < V) x[i * V + c] = to_bf(to_f(x[i * V + c]) + value);
  }
}

__global__ void nll_sum(const float* __restrict__ logprobs, const int32_t* __restrict__ targets,
                        const float* __restrict__ weights, double* loss, int64_t N, bool accumulate) {
  __shared__ double scratch[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
    if (targets[i] != kIgnoreIndex) s -= double(weights[i]) * double(logprobs[i]);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *loss = accumulate ? *loss + s : s;
}

// The host loop it replaces computed lse in double from the f32 maximum and rounded once.
template <typename L>
__global__ void finish_rows(const float* __restrict__ rowmax, const double* __restrict__ sumexp,
                            const float* __restrict__ target_logit, const int32_t* __restrict__ targets,
                            L* __restrict__ lse, float* __restrict__ logprobs, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    const float l = float(double(rowmax[i]) + log(sumexp[i]));
    lse[i] = L(l);
    if (targets) logprobs[i] = targets[i] == kIgnoreIndex ? 0.f : target_logit[i] - l;
  }
}

__global__ void weighted_sum_add(const double* __restrict__ values, const double* __restrict__ weights,
                                 double* total, int64_t N) {
  __shared__ double scratch[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) s += weights[i] * values[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *total += s;
}

template <int kVec>
__global__ void kl_rows(const __nv_bfloat16* logits, const __nv_bfloat16* __restrict__ ref,
                        const float* __restrict__ row_scale, float* __restrict__ kl, __nv_bfloat16* dlogits,
                        bool accumulate, int64_t V) {
  __shared__ float scratch[64];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16 *x = logits + row * V, *r = ref + row * V;
  const MaxSum sp = row_stats_bf16<kVec>(x, V, scratch);
  const MaxSum sq = row_stats_bf16<kVec>(r, V, scratch);
  const float lse_p = sp.m + __logf(sp.s), lse_q = sq.m + __logf(sq.s);
  const float a = dlogits ? row_scale[row] : 0.f;
  __nv_bfloat16* g = dlogits ? dlogits + row * V : nullptr;
  float acc = 0.f;
  for (int64_t i = threadIdx.x * int64_t(kVec); i < V; i += int64_t(blockDim.x) * kVec) {
    const Vec<kVec> xv = ld<kVec>(x + i), rv = ld<kVec>(r + i);
    Vec<kVec> o;
    if (g && accumulate) o = ld<kVec>(g + i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float lp = to_f(xv.v[k]) - lse_p, lq = to_f(rv.v[k]) - lse_q;
      const float q = __expf(lq);
      if (q > 0) acc += q * (lq - lp);  // an underflowed q (or a -inf logit) adds nothing
      if (g) {
        const float gv = a * (__expf(lp) - q);
        o.v[k] = to_bf(accumulate ? gv + to_f(o.v[k]) : gv);
      }
    }
    if (g) st<kVec>(g + i, o);
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) kl[row] = acc;
}

template <typename T>
__global__ void moments_rows(const T* __restrict__ logits, float* __restrict__ mu_out, float* __restrict__ sigma_out,
                             int64_t V) {
  __shared__ float scratch[64];
  const T* x = logits + blockIdx.x * V;
  const MaxSum st = row_stats(x, V, scratch);
  const float lse = st.m + __logf(st.s);
  float m = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float lp = load(x, j) - lse;
    m += __expf(lp) * lp;
  }
  m = block_sum(m, scratch);
  float var = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float lp = load(x, j) - lse, d = lp - m;
    var += __expf(lp) * d * d;
  }
  var = block_sum(var, scratch);
  if (threadIdx.x == 0) {
    mu_out[blockIdx.x] = m;
    sigma_out[blockIdx.x] = sqrtf(fmaxf(var, 0.f));
  }
}
}  // namespace

void cross_entropy_forward(const bf16* logits, const int32_t* targets, const float* weights, float* logprobs,
                           float* lse, bf16* dlogits, float dloss, int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  auto k = vec_rows(V, {logits, dlogits}) ? ce_fwd<8> : ce_fwd<1>;
  k<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), targets, weights, logprobs, lse,
                                                dlogits ? dev(dlogits) : nullptr, dloss, V);
  check_launch("cross_entropy_forward");
}

void cross_entropy_backward(const bf16* logits, const int32_t* targets, const float* weights, const float* lse,
                            float dloss, bf16* dlogits, int64_t N, int64_t first, int64_t V, int64_t vocab,
                            Stream s) {
  if (N <= 0) return;
  auto k = vec_rows(V, {logits, dlogits}) ? ce_bwd<8> : ce_bwd<1>;
  k<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), targets, weights, lse, dloss, dev(dlogits), first, V,
                                                vocab);
  check_launch("cross_entropy_backward");
}

void cross_entropy_shard_max(const bf16* logits, const int32_t* targets, float* rowmax, float* target_logit,
                             int64_t N, int64_t first, int64_t V, Stream s) {
  if (N <= 0) return;
  auto k = vec_rows(V, {logits}) ? shard_max_rows<8> : shard_max_rows<1>;
  k<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), targets, rowmax, target_logit, first, V);
  check_launch("cross_entropy_shard_max");
}

void cross_entropy_shard_sumexp(const bf16* logits, const float* rowmax, double* sumexp, bool difference_in_double,
                                int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  auto k = vec_rows(V, {logits}) ? shard_sumexp_rows<8> : shard_sumexp_rows<1>;
  k<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), rowmax, sumexp, difference_in_double, V);
  check_launch("cross_entropy_shard_sumexp");
}

void softmax_moment_shard(const bf16* logits, const float* rowmax, const double* sumexp, const double* center,
                          double* out, int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  moment_rows<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), rowmax, sumexp, center, out, V);
  check_launch("softmax_moment_shard");
}

void argmax_shard(const bf16* logits, const int32_t* exclude, int64_t first, float* best, int32_t* arg, int64_t N,
                  int64_t V, Stream s) {
  if (N <= 0) return;
  argmax_rows<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), exclude, first, best, arg, V);
  check_launch("argmax_shard");
}

void kl_shard(const bf16* ref_logits, const bf16* logits, const double* lse_q, const double* lse_p,
              const double* row_weight, double grad_scale, double* kl, bf16* dlogits, int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  auto k = vec_rows(V, {ref_logits, logits, dlogits}) ? kl_shard_rows<8> : kl_shard_rows<1>;
  k<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(ref_logits), dev(logits), lse_q, lse_p, row_weight, grad_scale, kl,
                                                dlogits ? dev(dlogits) : nullptr, V);
  check_launch("kl_shard");
}

void weighted_nll(const float* logprobs, const int32_t* targets, const float* weights, double* loss, int64_t N,
                  bool accumulate, Stream s) {
  nll_sum<<<1, 1024, 0, as_stream(s)>>>(logprobs, targets, weights, loss, N, accumulate);
  check_launch("weighted_nll");
}

void cross_entropy_shard_finish(const float* rowmax, const double* sumexp, const float* target_logit,
                                const int32_t* targets, const float* weights, float* lse_f32, double* lse_f64,
                                float* logprobs, double* loss, int64_t N, Stream s) {
  if (N <= 0) return;
  if (lse_f64)
    finish_rows<<<grid_for(N, 256), 256, 0, as_stream(s)>>>(rowmax, sumexp, target_logit, targets, lse_f64,
                                                             logprobs, N);
  else
    finish_rows<<<grid_for(N, 256), 256, 0, as_stream(s)>>>(rowmax, sumexp, target_logit, targets, lse_f32,
                                                             logprobs, N);
  check_launch("cross_entropy_shard_finish");
  if (targets) weighted_nll(logprobs, targets, weights, loss, N, true, s);
}

void weighted_row_sum(const double* values, const double* weights, double* total, int64_t N, Stream s) {
  if (N <= 0) return;
  weighted_sum_add<<<1, 1024, 0, as_stream(s)>>>(values, weights, total, N);
  check_launch("weighted_row_sum");
}

void add_at_targets(bf16* x, const int32_t* targets, int64_t first, float value, int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  add_at_targets_rows<<<grid_for(N, 256), 256, 0, as_stream(s)>>>(dev(x), targets, first, value, N, V);
  check_launch("add_at_targets_");
}

void kl_to_reference(const bf16* logits, const bf16* ref_logits, const float* row_scale, float* kl, bf16* dlogits,
                     bool accumulate, int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  LETHE_CHECK(!(accumulate && dlogits == logits), "kl_to_reference: accumulating dlogits cannot alias logits");
  LETHE_CHECK(!dlogits || dlogits != ref_logits, "kl_to_reference: dlogits cannot alias the reference's logits");
  auto k = vec_rows(V, {logits, ref_logits, dlogits}) ? kl_rows<8> : kl_rows<1>;
  k<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), dev(ref_logits), row_scale, kl,
                                                dlogits ? dev(dlogits) : nullptr, accumulate, V);
  check_launch("kl_to_reference");
}

void logit_moments(const bf16* logits, float* mu, float* sigma, int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  moments_rows<<<unsigned(N), kThreads, 0, as_stream(s)>>>(dev(logits), mu, sigma, V);
  check_launch("logit_moments");
}
void logit_moments(const float* logits, float* mu, float* sigma, int64_t N, int64_t V, Stream s) {
  if (N <= 0) return;
  moments_rows<<<unsigned(N), kThreads, 0, as_stream(s)>>>(logits, mu, sigma, V);
  check_launch("logit_moments");
}

}  // namespace lethe::cuda
