#include "engine/model/tp_layout.h"

#include "engine/model/llama.h"

#include <string>

namespace lethe {

TpLayout TpLayout::make(const LlamaConfig& c, int tp, int rank) {
  LETHE_CHECK(tp >= 1 && rank >= 0 && rank < tp, "tensor parallel rank ", rank, " of ", tp);
  LETHE_CHECK(c.n_heads % tp == 0, "tensor parallelism needs n_heads % tp == 0: n_heads = ", c.n_heads, ", tp = ", tp);
  LETHE_CHECK(c.ffn_dim % tp == 0, "tensor parallelism needs ffn_dim % tp == 0: ffn_dim = ", c.ffn_dim, ", tp = ", tp);
  LETHE_CHECK(c.vocab_size % tp == 0, "tensor parallelism needs vocab_size % tp == 0: vocab_size = ", c.vocab_size,
              ", tp = ", tp, " (pad the vocabulary)");
  TpLayout l;
  l.tp = tp;
  l.rank = rank;
  l.heads = c.n_heads / tp;
  l.q_head0 = rank * l.heads;
  l.kv_replicated = tp > 1 && c.n_kv_heads % tp != 0;
  l.kv_proj_heads = l.kv_replicated ? c.n_kv_heads : c.n_kv_heads / tp;
  l.kv_heads = l.kv_replicated ? l.heads : l.kv_proj_heads;
  l.ffn = c.ffn_dim / tp;
  l.vocab = c.vocab_size / tp;
  l.vocab_start = rank * l.vocab;
  return l;
}

std::vector<ParamSpec> llama_param_specs(const LlamaConfig& c, const TpLayout& t) {
  if (t.tp == 1) return llama_param_specs(c);
  const int64_t D = c.hd(), C = c.dim;
  auto rows = [&](const std::string& n, int64_t local, int64_t global, int64_t off) {
    return ParamSpec{n, {local, C}, {global, C}, 0, off};
  };
  auto cols = [&](const std::string& n, int64_t local, int64_t global, int64_t off) {
    return ParamSpec{n, {C, local}, {C, global}, 1, off};
  };
  std::vector<ParamSpec> s;
  s.push_back(rows("model.embed_tokens.weight", t.vocab, c.vocab_size, t.vocab_start));
  const int64_t q = t.heads * D, kv = t.kv_proj_heads * D;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s.push_back({p + "input_layernorm.weight", {C}});
    s.push_back(rows(p + "self_attn.q_proj.weight", q, c.q_dim(), t.rank * q));
    if (t.kv_replicated) {
      s.push_back({p + "self_attn.k_proj.weight", {kv, C}});
      s.push_back({p + "self_attn.v_proj.weight", {kv, C}});
    } else {
      s.push_back(rows(p + "self_attn.k_proj.weight", kv, c.kv_dim(), t.rank * kv));
      s.push_back(rows(p + "self_attn.v_proj.weight", kv, c.kv_dim(), t.rank * kv));
    }
    s.push_back(cols(p + "self_attn.o_proj.weight", q, c.q_dim(), t.rank * q));
    s.push_back({p + "post_attention_layernorm.weight", {C}});
    s.push_back(rows(p + "mlp.gate_proj.weight", t.ffn, c.ffn_dim, t.rank * t.ffn));
    s.push_back(rows(p + "mlp.up_proj.weight", t.ffn, c.ffn_dim, t.rank * t.ffn));
    s.push_back(cols(p + "mlp.down_proj.weight", t.ffn, c.ffn_dim, t.rank * t.ffn));
  }
  s.push_back({"model.norm.weight", {C}});
  if (!c.tie_embeddings) s.push_back(rows("lm_head.weight", t.vocab, c.vocab_size, t.vocab_start));
  return s;
}

}  // namespace lethe
