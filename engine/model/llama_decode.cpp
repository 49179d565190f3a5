// Greedy decoding with a key/value cache: LlamaModel::decode_prefill and decode_step. The
// new position runs the same ops as a row of the full forward (the same roundings under
// the bf16 policy and the same tensor-parallel collectives), attending to the cached keys
// and values through ops::attention_decode instead of recomputing the context.
#include <cmath>

#include "engine/model/llama.h"
#include "engine/parallel/regions.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace lethe {

void LlamaModel::decode_prefill(const Tensor& tokens, Tensor& logits) {
  check_dtype(tokens, DType::i32, "LlamaModel::decode_prefill", "tokens");
  LETHE_CHECK(tokens.ndim() == 2, "LlamaModel::decode_prefill: tokens must be [B, T], got ", tokens.describe());
  const int64_t B = tokens.dim(0), T0 = tokens.dim(1), S = cfg_.max_seq_len, KV = tpl_.kv_heads, D = cfg_.hd();
  check_shape(logits, {B, tpl_.vocab}, "LlamaModel::decode_prefill", "logits");
  const Shape cache_shape{B, S, KV, D};
  if (cache_k_.size() != size_t(cfg_.n_layers) || cache_k_[0].shape() != cache_shape) {
    cache_k_.assign(size_t(cfg_.n_layers), Tensor());
    cache_v_.assign(size_t(cfg_.n_layers), Tensor());
    for (int64_t l = 0; l < cfg_.n_layers; ++l) {
      cache_k_[size_t(l)] = Tensor::empty(cache_shape, dtype_);
      cache_v_[size_t(l)] = Tensor::empty(cache_shape, dtype_);
    }
  }
  if (!dec_cos_.defined()) ops::rope_tables(inv_freq_, S, dtype_, dec_cos_, dec_sin_);
  decode_len_ = 0;
  // The prefix is a forward (T0 <= max_seq_len is checked there); each layer's k and v
  // go to the cache as the layer finishes (a recomputed layer's activations are scratch).
  const int64_t row = KV * D;
  run_trunk(tokens, "LlamaModel::decode_prefill", [&](int64_t l, Acts& a) {
    for (int64_t b = 0; b < B; ++b) {
      cache_k_[size_t(l)].view(b * S * row, {T0 * row}).copy_from(a.k.view(b * T0 * row, {T0 * row}));
      cache_v_[size_t(l)].view(b * S * row, {T0 * row}).copy_from(a.v.view(b * T0 * row, {T0 * row}));
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    Tensor out = logits.slice_rows(b, b + 1);
    head_logits(b * T0 + T0 - 1, b * T0 + T0, out, "forward");
  }
  decode_B_ = B;
  decode_len_ = T0;
}

void LlamaModel::decode_step(const Tensor& next, Tensor& logits) {
  LETHE_CHECK(decode_len_ > 0, "LlamaModel::decode_step called before decode_prefill");
  check_dtype(next, DType::i32, "LlamaModel::decode_step", "next");
  check_shape(next, {decode_B_}, "LlamaModel::decode_step", "next");
  check_shape(logits, {decode_B_, tpl_.vocab}, "LlamaModel::decode_step", "logits");
  LETHE_CHECK(decode_len_ < cfg_.max_seq_len, "LlamaModel::decode_step: the cache holds max_seq_len = ",
              cfg_.max_seq_len, " positions, all used");
  Tensor x = Tensor::empty({decode_B_, cfg_.dim}, dtype_);
  if (tp_on()) vocab_parallel_embedding_forward(next, params_[0], vocab_shard(), x, grid_->tp_group());
  else ops::embedding_forward(next, params_[0], x);
  numerics_.check(x, {"forward", -1, "embed_tokens output"});
  decode_position(x, logits);
  ++decode_len_;
}

void LlamaModel::decode_position(Tensor& x, Tensor& logits) {
  const int64_t B = decode_B_, C = cfg_.dim, H = tpl_.heads, KV = tpl_.kv_heads, D = cfg_.hd(), F = tpl_.ffn;
  const int64_t S = cfg_.max_seq_len, t = decode_len_, row = KV * D;
  const DType dt = dtype_;
  Tensor xn = Tensor::empty({B, C}, dt), rstd = Tensor::empty({B}, dt), tmp = Tensor::empty({B, C}, dt),
         x2 = Tensor::empty({B, C}, dt), q = Tensor::empty({B, 1, H, D}, dt), k = Tensor::empty({B, 1, KV, D}, dt),
         v = Tensor::empty({B, 1, KV, D}, dt), o = Tensor::empty({B, 1, H, D}, dt), g = Tensor::empty({B, F}, dt),
         u = Tensor::empty({B, F}, dt), a = Tensor::empty({B, F}, dt);
  Tensor kv_full = tpl_.kv_replicated ? Tensor::empty({B, kv_proj_dim()}, dt) : Tensor();
  const Tensor cos = dec_cos_.slice_rows(t, t + 1), sin = dec_sin_.slice_rows(t, t + 1);
  const Shape q2{B, q_dim()}, kv2{B, row};
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const LayerW w = layer(params_, l);
    auto put = [&](Tensor& tt, const char* what) { store(tt, {"forward", l, what}); };
    ops::rmsnorm_forward(x, w.attn_norm, cfg_.norm_eps, xn, rstd);
    put(xn, "input_layernorm output");
    Tensor qf = q.reshape(q2), kf = k.reshape(kv2), vf = v.reshape(kv2);
    ops::linear_forward(xn, w.wq, qf);
    put(qf, "self_attn.q_proj output");
    if (tpl_.kv_replicated) {
      ops::linear_forward(xn, w.wk, kv_full);
      expand_kv(kv_full, k);
      ops::linear_forward(xn, w.wv, kv_full);
      expand_kv(kv_full, v);
    } else {
      ops::linear_forward(xn, w.wk, kf);
      ops::linear_forward(xn, w.wv, vf);
    }
    put(k, "self_attn.k_proj output");
    put(v, "self_attn.v_proj output");
    ops::rope_forward(q, cos, sin, q);
    put(q, "q after RoPE");
    ops::rope_forward(k, cos, sin, k);
    put(k, "k after RoPE");
    for (int64_t b = 0; b < B; ++b) {
      cache_k_[size_t(l)].view((b * S + t) * row, {row}).copy_from(k.view(b * row, {row}));
      cache_v_[size_t(l)].view((b * S + t) * row, {row}).copy_from(v.view(b * row, {row}));
    }
    ops::attention_decode(q, cache_k_[size_t(l)], cache_v_[size_t(l)], t + 1, 1.0 / std::sqrt(double(D)), o,
                          precision_);
    put(o, "attention output");
    ops::linear_forward(o.reshape(q2), w.wo, tmp);
    reduce_from_tp_region(*grid_, tmp);
    put(tmp, "self_attn.o_proj output");
    x2.copy_from(x);
    ops::add_(x2, tmp);
    put(x2, "residual stream after attention");
    ops::rmsnorm_forward(x2, w.mlp_norm, cfg_.norm_eps, xn, rstd);
    put(xn, "post_attention_layernorm output");
    ops::linear_forward(xn, w.wg, g);
    put(g, "mlp.gate_proj output");
    ops::linear_forward(xn, w.wu, u);
    put(u, "mlp.up_proj output");
    ops::swiglu_forward(g, u, a);
    put(a, "SwiGLU output");
    ops::linear_forward(a, w.wd, tmp);
    reduce_from_tp_region(*grid_, tmp);
    put(tmp, "mlp.down_proj output");
    x.copy_from(x2);
    ops::add_(x, tmp);
    put(x, "layer output (residual stream)");
  }
  ops::rmsnorm_forward(x, params_.get("model.norm.weight"), cfg_.norm_eps, xn, rstd);
  store(xn, {"forward", -1, "model.norm output"});
  ops::linear_forward(xn, out_weight(), logits);
  store(logits, {"forward", -1, "lm_head output (logits)"});
}

}  // namespace lethe
