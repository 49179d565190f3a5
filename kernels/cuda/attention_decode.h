// One new query position per sequence against a key/value cache on the GPU (greedy
// decoding: verbatim memorisation, `lethe generate`). The same math as
// ops::attention_decode's bf16 path, the last row of attention_forward: products in fp32 of
// bf16 inputs, scaled into base 2, an online softmax over tiles of kAttentionKeyTile keys
// whose probabilities are rounded to bf16 before they weight V, and the output rounded once.
#pragma once
#include "kernels/cuda/runtime.h"

namespace lethe::cuda {

// The softmax's tile of keys: kAttentionKeyTile of kernels/attention.h (checked where the
// two headers meet, in device_ops.cpp), which the CPU reference rounds by.
constexpr int kDecodeKeyTile = 64;

// q[B, 1, H, D] bf16, k_cache, v_cache [B, S, KV, D] bf16 (keys 0..n-1 are read) ->
// o[B, 1, H, D] bf16. Query head h reads kv head h / (H / KV). D <= 256.
void attention_decode(const bf16* q, const bf16* k_cache, const bf16* v_cache, int64_t n, float scale, bf16* o,
                      int64_t B, int64_t S, int64_t H, int64_t KV, int64_t D, Stream s = nullptr);

}  // namespace lethe::cuda
