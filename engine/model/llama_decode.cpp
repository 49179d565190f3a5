// Greedy decoding with a key/value cache: LlamaModel::decode_prefill and decode_step. The
// new position runs the layer's own ops (LlamaModel::layer_ops: the same roundings under
// the bf16 policy and the same tensor-parallel collectives as the forward), attending to
// the cached keys and values through ops::attention_decode instead of the whole context.
#include <cmath>
#include <utility>

#include "engine/model/llama.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"

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
      cache_k_[size_t(l)] = Tensor::empty(cache_shape, wdt_, device_);
      cache_v_[size_t(l)] = Tensor::empty(cache_shape, wdt_, device_);
    }
  }
  if (!dec_cos_.defined()) {
    ops::rope_tables(inv_freq_, S, sdt_, dec_cos_, dec_sin_);
    dec_cos_ = on_device(dec_cos_);
    dec_sin_ = on_device(dec_sin_);
  }
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
  Tensor x = Tensor::empty({decode_B_, cfg_.dim}, wdt_, device_);
  if (device_ != Device::cpu && next.device() == Device::cpu) check_token_ids(next, "LlamaModel::decode_step");
  if (tp_on()) vocab_parallel_embedding_forward(on_device(next), params_[0], vocab_shard(), x, grid_->tp_group());
  else ops::embedding_forward(on_device(next), params_[0], x);
  numerics_.check(x, {"forward", -1, "embed_tokens output"});
  decode_position(x, logits);
  ++decode_len_;
}

void LlamaModel::decode_fork(int64_t copies) {
  LETHE_CHECK(decode_len_ > 0, "LlamaModel::decode_fork called before decode_prefill");
  LETHE_CHECK(copies >= 1, "LlamaModel::decode_fork: copies must be >= 1, got ", copies);
  const int64_t S = cfg_.max_seq_len, KV = tpl_.kv_heads, D = cfg_.hd(), row = KV * D, n = decode_len_ * row;
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    for (Tensor* c : {&cache_k_[size_t(l)], &cache_v_[size_t(l)]}) {
      Tensor fresh = Tensor::empty({copies, S, KV, D}, wdt_, device_);
      for (int64_t b = 0; b < copies; ++b) fresh.view(b * S * row, {n}).copy_from(c->view(0, {n}));
      *c = std::move(fresh);
    }
  decode_B_ = copies;
}

int64_t LlamaModel::decode_cache_bytes_per_sequence() const {
  return 2 * cfg_.n_layers * cfg_.max_seq_len * tpl_.kv_heads * cfg_.hd() * int64_t(dtype_size(wdt_));
}

void LlamaModel::decode_position(Tensor& x, Tensor& logits) {
  const int64_t B = decode_B_, C = cfg_.dim, S = cfg_.max_seq_len, t = decode_len_;
  const int64_t row = tpl_.kv_heads * cfg_.hd();
  if (!dec_x_.defined() || dec_x_.dim(0) != B) {
    dec_acts_ = make_acts(B, 1);
    dec_x_ = Tensor::empty({B, C}, wdt_, device_);
    dec_out_ = Tensor::empty({B, C}, wdt_, device_);
    dec_tmp_ = Tensor::empty({B, C}, wdt_, device_);
    dec_kv_full_ = tpl_.kv_replicated ? Tensor::empty({B, kv_proj_dim()}, wdt_, device_) : Tensor();
    dec_qkv_ = tpl_.kv_replicated ? Tensor() : Tensor::empty({B, q_dim() + 2 * kv_proj_dim()}, wdt_, device_);
  }
  dec_x_.copy_from(x);
  const Tensor cos = dec_cos_.slice_rows(t, t + 1), sin = dec_sin_.slice_rows(t, t + 1);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    // The layer's ops over one position; its attention appends k and v to the cache and
    // reads every cached position.
    layer_ops(l, dec_acts_, {dec_x_, dec_out_, dec_tmp_, dec_kv_full_, dec_qkv_, cos, sin}, [&](Acts& a) {
      for (int64_t b = 0; b < B; ++b) {
        cache_k_[size_t(l)].view((b * S + t) * row, {row}).copy_from(a.k.view(b * row, {row}));
        cache_v_[size_t(l)].view((b * S + t) * row, {row}).copy_from(a.v.view(b * row, {row}));
      }
      ops::attention_decode(a.q, cache_k_[size_t(l)], cache_v_[size_t(l)], t + 1, 1.0 / std::sqrt(double(cfg_.hd())),
                            a.o, precision_);
    });
    std::swap(dec_x_, dec_out_);
  }
  Tensor& xn = dec_acts_.xn1;
  ops::rmsnorm_forward(dec_x_, params_.get("model.norm.weight"), cfg_.norm_eps, xn, dec_acts_.rstd1);
  store(xn, {"forward", -1, "model.norm output"});
  ops::linear_forward(xn, out_weight(), logits);
  store(logits, {"forward", -1, "lm_head output (logits)"});
}

}  // namespace lethe
