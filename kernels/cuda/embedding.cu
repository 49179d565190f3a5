#include "kernels/cuda/embedding.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
__global__ void embed_fwd(const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ table,
                          __nv_bfloat16* __restrict__ out, int64_t V, int64_t C) {
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  __nv_bfloat16* o = out + row * C;
  if (id < 0 || id >= V) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = to_bf(NAN);
    return;
  }
  const __nv_bfloat16* t = table + int64_t(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = t[c];
}
__global__ void embed_bwd(const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ dout,
                          float* __restrict__ dtable, int64_t V, int64_t C) {
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  if (id < 0 || id >= V) return;
  const __nv_bfloat16* d = dout + row * C;
  float* g = dtable + int64_t(id) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(g + c, to_f(d[c]));
}
}  // namespace

void embedding_forward(const int32_t* ids, const bf16* table, bf16* out, int64_t N, int64_t V, int64_t C,
                       Stream s) {
  if (N <= 0) return;
  embed_fwd<<<unsigned(N), 256, 0, as_stream(s)>>>(ids, dev(table), dev(out), V, C);
  check_launch("embedding_forward");
}
void embedding_backward(const int32_t* ids, const bf16* dout, float* dtable, int64_t N, int64_t V, int64_t C,
                        Stream s) {
  if (N <= 0) return;
  embed_bwd<<<unsigned(N), 256, 0, as_stream(s)>>>(ids, dev(dout), dtable, V, C);
  check_launch("embedding_backward");
}

}  // namespace lethe::cuda
