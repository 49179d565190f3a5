// LlamaConfig: the architecture of a Llama-family model (Llama-2/3, Mistral, Yi,
// SmolLM2). One struct flows unchanged into every layer. Field names follow lethe's YAML
// keys; the transformers config.json name is given where it differs.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/rope.h"

namespace lethe {

struct LlamaConfig {
  std::string name = "unnamed";  // preset name; informational only
  int64_t vocab_size = 0;        // tokens in the vocabulary
  int64_t dim = 0;               // residual width (hidden_size)
  int64_t n_layers = 0;          // decoder blocks (num_hidden_layers)
  int64_t n_heads = 0;           // query heads (num_attention_heads)
  int64_t n_kv_heads = 0;        // key/value heads (num_key_value_heads); < n_heads is GQA, must divide it
  int64_t head_dim = 0;          // per-head width; 0 means dim / n_heads
  int64_t ffn_dim = 0;           // SwiGLU hidden width (intermediate_size)
  double norm_eps = 1e-5;        // RMSNorm epsilon (rms_norm_eps)
  double rope_theta = 10000.0;   // RoPE base
  ops::RopeScaling rope_scaling; // long-context frequency scaling (rope_scaling)
  int64_t max_seq_len = 2048;    // longest sequence the model is run on (max_position_embeddings)
  bool tie_embeddings = false;   // output projection shares the token embedding (tie_word_embeddings)
  double init_std = 0.02;        // std of random initialisation (initializer_range)

  int64_t hd() const { return head_dim ? head_dim : (n_heads ? dim / n_heads : 0); }
  int64_t q_dim() const { return n_heads * hd(); }
  int64_t kv_dim() const { return n_kv_heads * hd(); }

  // Throws lethe::Error naming the offending field; callers add the file name.
  void validate() const;

  int64_t n_params() const;
  // Parameters that take part in the matrix multiplies (excludes the input embedding
  // lookup unless it is tied to the output), the "N" of 6N FLOPs per token.
  int64_t n_matmul_params() const;
  // Training FLOPs per token at sequence length T: 6 * matmul params + causal attention
  // (12 * layers * T * q_dim / 2), as DESIGN.md defines MFU.
  double train_flops_per_token(int64_t T) const;
};

}  // namespace lethe
