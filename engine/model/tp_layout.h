// How a Llama model is split over tp ranks (Megatron-LM): attention heads and the SwiGLU
// width are divided, q/k/v and gate/up by rows (column-parallel), o and down by columns
// (row-parallel), the embedding and output projection by vocabulary rows. Key/value heads
// are divided when n_kv_heads % tp == 0; otherwise every rank holds k/v whole and repeats
// the kv head of each of its query heads (their gradients are summed over tp).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/model/llama_config.h"
#include "engine/model/param_set.h"

namespace lethe {

struct TpLayout {
  int tp = 1, rank = 0;
  int64_t heads = 0;         // query heads on this rank
  int64_t q_head0 = 0;       // first global query head on this rank
  bool kv_replicated = false;
  int64_t kv_proj_heads = 0; // kv heads in this rank's k/v projection
  int64_t kv_heads = 0;      // kv heads the attention kernel sees (= heads when replicated)
  int64_t ffn = 0;           // SwiGLU width on this rank
  int64_t vocab = 0;         // vocabulary rows on this rank
  int64_t vocab_start = 0;   // first vocabulary id on this rank

  // Throws naming the dimension that tp does not divide.
  static TpLayout make(const LlamaConfig& c, int tp, int rank);
  // The global kv head that local query head j reads (replicated case).
  int64_t kv_head_of(const LlamaConfig& c, int64_t j) const { return (q_head0 + j) / (c.n_heads / c.n_kv_heads); }
};

// This rank's parameters: transformers' names, local shapes, and each block's place in
// the whole tensor. With tp == 1 it equals llama_param_specs(cfg).
std::vector<ParamSpec> llama_param_specs(const LlamaConfig& cfg, const TpLayout& tp);

}  // namespace lethe
