#include "kernels/cuda/embedding.h"

#include "engine/core/debug_mode.h"
#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
// The table holds ids [first, first + Vr) of a vocabulary of `vocab` (tensor parallelism
// shards it by rows); an id another shard holds gives a zero row, one outside the
// vocabulary a NaN row (the numerics guard names it).
__global__ void embed_fwd(const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ table,
                          __nv_bfloat16* __restrict__ out, int64_t first, int64_t Vr, int64_t vocab, int64_t C) {
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  __nv_bfloat16* o = out + row * C;
  const int64_t r = int64_t(id) - first;
  if (id < 0 || id >= vocab || r < 0 || r >= Vr) {
    const __nv_bfloat16 fill = to_bf(id < 0 || id >= vocab ? NAN : 0.f);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = fill;
    return;
  }
  const __nv_bfloat16* t = table + r * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = t[c];
}
__global__ void embed_bwd(const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ dout,
                          float* __restrict__ dtable, int64_t first, int64_t Vr, int64_t vocab, int64_t C) {
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  const int64_t r = int64_t(id) - first;
  if (id < 0 || id >= vocab || r < 0 || r >= Vr) return;
  const __nv_bfloat16* d = dout + row * C;
  float* g = dtable + r * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(g + c, to_f(d[c]));
}
// Debug mode: a thread per channel walks the tokens in order, so repeated ids add in the
// same order on every run (no atomics), the order of the CPU twin. Slow: for debug mode.
__global__ void embed_bwd_ordered(const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ dout,
                                  float* __restrict__ dtable, int64_t first, int64_t Vr, int64_t vocab, int64_t N,
                                  int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  for (int64_t row = 0; row < N; ++row) {
    const int32_t id = ids[row];
    const int64_t r = int64_t(id) - first;
    if (id < 0 || id >= vocab || r < 0 || r >= Vr) continue;
    dtable[r * C + c] += to_f(dout[row * C + c]);
  }
}
}  // namespace

void embedding_forward(const int32_t* ids, const bf16* table, bf16* out, int64_t N, int64_t first, int64_t Vr,
                       int64_t vocab, int64_t C, Stream s) {
  if (N <= 0) return;
  embed_fwd<<<unsigned(N), 256, 0, as_stream(s)>>>(ids, dev(table), dev(out), first, Vr, vocab, C);
  check_launch("embedding_forward");
}
void embedding_backward(const int32_t* ids, const bf16* dout, float* dtable, int64_t N, int64_t first, int64_t Vr,
                        int64_t vocab, int64_t C, Stream s) {
  if (N <= 0) return;
  if (debug_mode())
    embed_bwd_ordered<<<unsigned((C + 31) / 32), 32, 0, as_stream(s)>>>(ids, dev(dout), dtable, first, Vr, vocab, N,
                                                                        C);
  else
    embed_bwd<<<unsigned(N), 256, 0, as_stream(s)>>>(ids, dev(dout), dtable, first, Vr, vocab, C);
  check_launch("embedding_backward");
}

}  // namespace lethe::cuda
