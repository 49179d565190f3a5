#include "engine/model/llama_config.h"

#include "engine/core/error.h"

namespace lethe {

void LlamaConfig::validate() const {
  LETHE_CHECK(vocab_size > 0, "vocab_size must be positive, got ", vocab_size);
  LETHE_CHECK(vocab_size < (int64_t(1) << 31), "vocab_size ", vocab_size, " does not fit 32-bit token ids");
  LETHE_CHECK(dim > 0, "dim must be positive, got ", dim);
  LETHE_CHECK(n_layers > 0, "n_layers must be positive, got ", n_layers);
  LETHE_CHECK(n_heads > 0, "n_heads must be positive, got ", n_heads);
  LETHE_CHECK(n_kv_heads > 0, "n_kv_heads must be positive, got ", n_kv_heads);
  LETHE_CHECK(n_heads % n_kv_heads == 0, "n_heads (", n_heads, ") is not divisible by n_kv_heads (", n_kv_heads,
              ")");
  LETHE_CHECK(head_dim >= 0, "head_dim must be >= 0 (0 means dim / n_heads), got ", head_dim);
  LETHE_CHECK(head_dim > 0 || dim % n_heads == 0, "dim (", dim, ") is not divisible by n_heads (", n_heads,
              "); set head_dim explicitly");
  LETHE_CHECK(hd() % 2 == 0, "head_dim (", hd(), ") must be even for RoPE");
  LETHE_CHECK(ffn_dim > 0, "ffn_dim must be positive, got ", ffn_dim);
  LETHE_CHECK(norm_eps > 0, "norm_eps must be positive, got ", norm_eps);
  LETHE_CHECK(rope_theta > 0, "rope_theta must be positive, got ", rope_theta);
  LETHE_CHECK(max_seq_len > 0, "max_seq_len must be positive, got ", max_seq_len);
  LETHE_CHECK(init_std >= 0, "init_std must be >= 0, got ", init_std);
  const auto& s = rope_scaling;
  LETHE_CHECK(s.type == "none" || s.type == "linear" || s.type == "llama3", "rope_scaling.type '", s.type,
              "' is not supported (none, linear, llama3)");
  if (s.type != "none") LETHE_CHECK(s.factor > 0, "rope_scaling.factor must be positive, got ", s.factor);
  if (s.type == "llama3") {
    LETHE_CHECK(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor,
                "rope_scaling needs 0 < low_freq_factor < high_freq_factor, got ", s.low_freq_factor, ", ",
                s.high_freq_factor);
    LETHE_CHECK(s.original_max_position_embeddings > 0,
                "rope_scaling.original_max_position_embeddings must be positive");
  }
}

int64_t LlamaConfig::n_params() const {
  const int64_t per_layer = 2 * dim + dim * q_dim() + 2 * dim * kv_dim() + q_dim() * dim + 3 * dim * ffn_dim;
  return vocab_size * dim * (tie_embeddings ? 1 : 2) + n_layers * per_layer + dim;
}

int64_t LlamaConfig::n_matmul_params() const {
  const int64_t per_layer = dim * q_dim() + 2 * dim * kv_dim() + q_dim() * dim + 3 * dim * ffn_dim;
  return n_layers * per_layer + vocab_size * dim;
}

double LlamaConfig::train_flops_per_token(int64_t T) const {
  return 6.0 * double(n_matmul_params()) + 6.0 * double(n_layers) * double(T) * double(q_dim());
}

}  // namespace lethe
