#include "engine/model/llama.h"

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>

#include "engine/core/debug_mode.h"
#include "engine/core/rng.h"
#include "engine/parallel/regions.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace lethe {

std::vector<ParamSpec> llama_param_specs(const LlamaConfig& c) {
  std::vector<ParamSpec> s;
  s.push_back({"model.embed_tokens.weight", {c.vocab_size, c.dim}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s.push_back({p + "input_layernorm.weight", {c.dim}});
    s.push_back({p + "self_attn.q_proj.weight", {c.q_dim(), c.dim}});
    s.push_back({p + "self_attn.k_proj.weight", {c.kv_dim(), c.dim}});
    s.push_back({p + "self_attn.v_proj.weight", {c.kv_dim(), c.dim}});
    s.push_back({p + "self_attn.o_proj.weight", {c.dim, c.q_dim()}});
    s.push_back({p + "post_attention_layernorm.weight", {c.dim}});
    s.push_back({p + "mlp.gate_proj.weight", {c.ffn_dim, c.dim}});
    s.push_back({p + "mlp.up_proj.weight", {c.ffn_dim, c.dim}});
    s.push_back({p + "mlp.down_proj.weight", {c.dim, c.ffn_dim}});
  }
  s.push_back({"model.norm.weight", {c.dim}});
  if (!c.tie_embeddings) s.push_back({"lm_head.weight", {c.vocab_size, c.dim}});
  return s;
}

LlamaModel::LlamaModel(const LlamaConfig& cfg, DType dtype, std::shared_ptr<ProcessGrid> grid)
    : LlamaModel(cfg, Precision::f32, std::move(grid), Device::cpu) {
  LETHE_CHECK(dtype == DType::f32 || dtype == DType::f64, "LlamaModel on CPU computes in f32 or f64, got ",
              dtype_name(dtype));
  if (dtype == DType::f64) {
    dtype_ = wdt_ = sdt_ = DType::f64;
    params_ = ParamSet(llama_param_specs(cfg_, tpl_), dtype);
    gdt_ = dtype;
  }
}

LlamaModel::LlamaModel(const LlamaConfig& cfg, Precision precision, std::shared_ptr<ProcessGrid> grid, Device device)
    : cfg_(cfg), dtype_(DType::f32), device_(device), precision_(precision),
      grid_(grid ? std::move(grid) : ProcessGrid::single()) {
  cfg_.validate();
  const bool dev = device != Device::cpu;
  LETHE_CHECK(!dev || precision == Precision::bf16, "LlamaModel on ", device_name(device),
              ": the device runs the bf16 policy (its kernels compute in bf16); precision f32 runs on the CPU");
  wdt_ = dev ? DType::bf16 : dtype_;
  sdt_ = dev ? DType::f32 : dtype_;
  tpl_ = TpLayout::make(cfg_, grid_->tp(), grid_->tp_rank());
  LETHE_CHECK(!dev || !tpl_.kv_replicated, "LlamaModel on ", device_name(device), ": tp = ", grid_->tp(),
              " does not divide the model's ", cfg_.n_kv_heads,
              " key/value heads, and replicating them across tp ranks runs on the CPU only; use a tp that divides ",
              cfg_.n_kv_heads);
  params_ = ParamSet(llama_param_specs(cfg_, tpl_), wdt_, device);
  gdt_ = sdt_;
  inv_freq_ = ops::rope_inv_freq(cfg_.hd(), cfg_.rope_theta, cfg_.rope_scaling);
}

Tensor LlamaModel::on_device(const Tensor& t) const { return t.device() == device_ ? t : t.to(device_); }

Tensor LlamaModel::as_token_weights(const Tensor& w) const {
  // Under the bf16 policy the weights are f32 on every device: the GPU's cross-entropy
  // reads f32, and the emulation must see the same values.
  const DType want = precision_ == Precision::bf16 ? DType::f32 : w.dtype();
  return on_device(w.dtype() == want ? w : w.to(want));
}

void LlamaModel::store(Tensor& t, const NumericsGuard::Site& site) {
  // On a device the op wrote its output in the storage dtype: the rounding already happened.
  if (precision_ == Precision::bf16 && device_ == Device::cpu) {
    const int64_t changed = round_to_bf16_(t);
    if (probe_) probe_(site, t, changed);
  }
  numerics_.check(t, site);
}

void LlamaModel::stored(const Tensor& t, const NumericsGuard::Site& site, int64_t changed) {
  if (precision_ == Precision::bf16 && device_ == Device::cpu && probe_) probe_(site, t, changed);
  numerics_.check(t, site);
}

void LlamaModel::init_weights(uint64_t seed) {
  for (size_t i = 0; i < params_.size(); ++i) {
    // On a device: drawn on the host in f32, one tensor at a time, and copied over (the
    // copy rounds to bf16 as round_to_bf16_ does on the CPU).
    Tensor& dst = params_[i];
    Tensor p = device_ == Device::cpu ? dst : Tensor::empty(dst.shape(), DType::f32);
    const bool is_norm = p.ndim() == 1;
    // One Philox stream per parameter index: adding a layer never shifts other weights.
    Philox rng(seed, uint64_t(i));
    const int64_t n = p.numel();
    // Each element draws from its index in the whole tensor, so every tp layout starts
    // from the same weights.
    const ParamSpec& sp = params_.spec(i);
    const int64_t cols = p.ndim() == 2 ? p.dim(1) : 1, gcols = sp.full_shape().size() == 2 ? sp.full_shape()[1] : 1;
    auto global = [&](int64_t j) -> uint64_t {
      if (!sp.sharded()) return uint64_t(j);
      if (sp.shard_dim == 0) return uint64_t(sp.shard_offset * cols + j);
      return uint64_t((j / cols) * gcols + sp.shard_offset + j % cols);
    };
    if (p.dtype() == DType::f32) {
      float* d = p.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < n; ++j) d[j] = is_norm ? 1.0f : float(cfg_.init_std * rng.normal(global(j)));
    } else {
      double* d = p.data<double>();
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < n; ++j) d[j] = is_norm ? 1.0 : cfg_.init_std * rng.normal(global(j));
    }
    if (device_ != Device::cpu) dst.copy_from(p);
  }
  if (precision_ == Precision::bf16 && device_ == Device::cpu) round_to_bf16_(params_.flat());
}

void LlamaModel::set_recompute_layers(int64_t n) {
  LETHE_CHECK(n >= 0 && n <= cfg_.n_layers, "recompute_layers must be in [0, ", cfg_.n_layers, "], got ", n);
  recompute_layers_ = n;
  have_forward_ = false;  // stored activations no longer match the layout
  have_loss_ = false;
  forward_layers_ = 0;
}

LlamaModel::LayerW LlamaModel::layer(ParamSet& set, int64_t l) {
  // Index arithmetic over llama_param_specs' order: 9 tensors per layer after the embedding.
  const size_t b = 1 + size_t(l) * 9;
  return {set[b],     set[b + 1], set[b + 2], set[b + 3], set[b + 4], set[b + 5], set[b + 6], set[b + 7], set[b + 8],
          set.span(b + 1, 3, {q_dim() + 2 * kv_proj_dim(), cfg_.dim}), set.span(b + 6, 2, {2 * tpl_.ffn, cfg_.dim})};
}

LlamaModel::Acts LlamaModel::make_acts(int64_t B, int64_t T) const {
  const int64_t N = B * T, C = cfg_.dim, H = tpl_.heads, KV = tpl_.kv_heads, D = cfg_.hd(), F = tpl_.ffn;
  const DType dt = wdt_, st = sdt_;
  const Device dev = device_;
  Acts a;
  a.xn1 = Tensor::empty({N, C}, dt, dev);
  a.rstd1 = Tensor::empty({N}, st, dev);
  a.q = Tensor::empty({B, T, H, D}, dt, dev);
  a.k = Tensor::empty({B, T, KV, D}, dt, dev);
  a.v = Tensor::empty({B, T, KV, D}, dt, dev);
  a.o = Tensor::empty({B, T, H, D}, dt, dev);
  a.lse = Tensor::empty({B, H, T}, st, dev);
  a.x2 = Tensor::empty({N, C}, dt, dev);
  a.xn2 = Tensor::empty({N, C}, dt, dev);
  a.rstd2 = Tensor::empty({N}, st, dev);
  a.gu = Tensor::empty({N, 2 * F}, dt, dev);
  a.a = Tensor::empty({N, F}, dt, dev);
  return a;
}

void LlamaModel::allocate(int64_t B, int64_t T) {
  // A forward-only model keeps one layer's activations, as when every layer is recomputed.
  const int64_t rc = forward_only_ ? cfg_.n_layers : recompute_layers_;
  const int64_t n_acts = cfg_.n_layers - rc + (rc > 0 ? 1 : 0);
  if (B == B_ && T == T_ && rc == stored_rc_ && int64_t(acts_.size()) == n_acts) return;
  B_ = B;
  T_ = T;
  stored_rc_ = rc;
  const int64_t N = B * T, C = cfg_.dim;
  const DType dt = wdt_, st = sdt_;
  const Device dev = device_;
  resid_ = Tensor::empty({cfg_.n_layers + 1, N, C}, dt, dev);
  acts_.clear();
  acts_.resize(size_t(n_acts));
  for (Acts& a : acts_) a = make_acts(B, T);
  tmp_ = Tensor::empty({N, C}, dt, dev);
  xf_ = Tensor::empty({N, C}, dt, dev);
  rstdf_ = Tensor::empty({N}, st, dev);
  logits_ = Tensor();  // the loss path's chunks and the whole logits are allocated on use
  chunk_ = Tensor();
  dchunk_ = Tensor();
  held_ = {-1, -1};
  logits_kept_ = false;
  logprobs_ = Tensor::empty({N}, st, dev);
  lse_ = Tensor::empty({N}, st, dev);
  ops::rope_tables(inv_freq_, T, st, cos_, sin_);
  if (dev != Device::cpu) {
    cos_ = cos_.to(dev);
    sin_ = sin_.to(dev);
  }
  if (tpl_.kv_replicated) kv_full_ = Tensor::empty({N, kv_proj_dim()}, dt, dev);
  qkv_ = tpl_.kv_replicated ? Tensor() : Tensor::empty({N, q_dim() + 2 * kv_proj_dim()}, dt, dev);
  dres_ = Tensor();  // backward buffers are allocated on first use
}

void LlamaModel::expand_kv(const Tensor& full, Tensor& out) const {
  const int64_t D = cfg_.hd(), KVg = tpl_.kv_proj_heads, H = tpl_.heads, N = full.numel() / (KVg * D);
  const size_t es = dtype_size(dtype_);
  const char* src = static_cast<const char*>(full.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < H; ++j)
      std::memcpy(dst + size_t((i * H + j) * D) * es, src + size_t((i * KVg + tpl_.kv_head_of(cfg_, j)) * D) * es,
                  size_t(D) * es);
}

void LlamaModel::collapse_kv(const Tensor& d_exp, Tensor& d_full) const {
  const int64_t N = B_ * T_, D = cfg_.hd(), KVg = tpl_.kv_proj_heads, H = tpl_.heads;
  d_full.zero_();
  auto run = [&](auto* dst, const auto* src) {
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < H; ++j) {
        const int64_t k = tpl_.kv_head_of(cfg_, j);
        for (int64_t d = 0; d < D; ++d) dst[(i * KVg + k) * D + d] += src[(i * H + j) * D + d];
      }
  };
  if (dtype_ == DType::f32) run(d_full.data<float>(), d_exp.data<float>());
  else run(d_full.data<double>(), d_exp.data<double>());
}

Tensor LlamaModel::tp_sum_buffer(const Tensor& like) {
  if (!tp_on() || device_ == Device::cpu) return like;
  const int64_t n = like.numel();
  if (!red_.defined() || red_.numel() < n) red_ = Tensor::empty({n}, DType::f32, device_);
  return red_.view(0, like.shape());
}

void LlamaModel::finish_tp_sum(Tensor& buf, Tensor& dst, bool forward) {
  if (forward) reduce_from_tp_region(*grid_, buf);
  else copy_to_tp_region_backward(*grid_, buf);
  if (buf.raw() != dst.raw()) dst.copy_from(buf);  // bf16: the one rounding of the sum
}

void LlamaModel::agree_replicated_grads(std::initializer_list<Tensor*> grads) {
  // Every tp rank holds the norm weights whole and computes their gradient from the same
  // (all-reduced) inputs. On the CPU the results are identical; a device's RMSNorm adds
  // dw with fp32 atomics, whose order differs between ranks, so the replicas would drift
  // apart in the last bits step after step. Every rank takes tp rank 0's (an exact copy:
  // the emulation, whose ranks agree already, is unchanged).
  if (!tp_on() || device_ == Device::cpu) return;
  for (Tensor* g : grads) grid_->tp_group().broadcast(*g, 0);
}

void LlamaModel::row_parallel_linear(const Tensor& x, const Tensor& w, Tensor& y) {
  Tensor part = tp_sum_buffer(y);
  ops::linear_forward(x, w, part);
  finish_tp_sum(part, y, true);
}

void LlamaModel::layer_forward(int64_t l, Acts& a) {
  const int64_t N = B_ * T_, C = cfg_.dim;
  Tensor out = resid_.view((l + 1) * N * C, {N, C});
  layer_ops(l, a, {resid_.view(l * N * C, {N, C}), out, tmp_, kv_full_, qkv_, cos_, sin_}, [&](Acts& s) {
    ops::attention_forward(s.q, s.k, s.v, 1.0 / std::sqrt(double(cfg_.hd())), s.o, s.lse, precision_);
  });
}

// The layer's op sequence, written once for every way the model runs it: the forward over
// [B, T] (io.x, io.out: rows of the residual stream), and a decoding step over one new
// position per sequence (engine/model/llama_decode.cpp), which differ only in the attention.
void LlamaModel::layer_ops(int64_t l, Acts& a, const LayerIO& io, const std::function<void(Acts&)>& attend) {
  const LayerW w = layer(params_, l);
  const int64_t N = io.x.dim(0);
  const Shape q2{N, q_dim()}, kv2{N, tpl_.kv_heads * cfg_.hd()};
  Tensor tmp = io.tmp, kv_full = io.kv_full, out = io.out;
  // Every op's output is stored (bf16: rounded, as the GPU stores it in a bf16 buffer).
  auto put = [&](Tensor& t, const char* what) { store(t, {"forward", l, what}); };

  ops::rmsnorm_forward(io.x, w.attn_norm, cfg_.norm_eps, a.xn1, a.rstd1);
  put(a.xn1, "input_layernorm output");
  if (tpl_.kv_replicated) {
    Tensor q = a.q.reshape(q2);
    ops::linear_forward(a.xn1, w.wq, q);
    put(q, "self_attn.q_proj output");
    ops::linear_forward(a.xn1, w.wk, kv_full);
    expand_kv(kv_full, a.k);
    ops::linear_forward(a.xn1, w.wv, kv_full);
    expand_kv(kv_full, a.v);
    put(a.k, "self_attn.k_proj output");
    put(a.v, "self_attn.v_proj output");
    ops::rope_forward(a.q, io.cos, io.sin, a.q);
    ops::rope_forward(a.k, io.cos, io.sin, a.k);
  } else {
    // One GEMM for q, k and v; the split writes q and k rotated and v as it is (v's values
    // are the fused output's, already stored).
    Tensor qkv = io.qkv;
    ops::linear_forward(a.xn1, w.wqkv, qkv);
    put(qkv, "self_attn.q_proj, k_proj and v_proj output");
    ops::qkv_split_rope(qkv, io.cos, io.sin, a.q, a.k, a.v);
  }
  put(a.q, "q after RoPE");
  put(a.k, "k after RoPE");
  attend(a);
  put(a.o, "attention output");
  row_parallel_linear(a.o.reshape(q2), w.wo, tmp);
  put(tmp, "self_attn.o_proj output");
  // The residual add and the norm that reads it: one fused op (the GPU's kernel), which
  // writes the stream where the backward keeps it and stores (bf16: rounds) it before
  // normalising it, as put() would.
  const int64_t changed =
      ops::residual_rmsnorm_forward(io.x, tmp, a.x2, w.mlp_norm, cfg_.norm_eps, a.xn2, a.rstd2, precision_);
  stored(a.x2, {"forward", l, "residual stream after attention"}, changed);
  put(a.xn2, "post_attention_layernorm output");
  ops::linear_forward(a.xn2, w.wgu, a.gu);
  put(a.gu, "mlp.gate_proj and mlp.up_proj output");
  ops::swiglu_forward(a.gu, a.a);
  put(a.a, "SwiGLU output");
  row_parallel_linear(a.a, w.wd, tmp);
  put(tmp, "mlp.down_proj output");
  ops::add(a.x2, tmp, out);
  put(out, "layer output (residual stream)");
}

void LlamaModel::begin(const Tensor& tokens, const char* op) {
  check_dtype(tokens, DType::i32, op, "tokens");
  LETHE_CHECK(tokens.ndim() == 2, op, ": tokens must be [B, T], got ", tokens.describe());
  const int64_t B = tokens.dim(0), T = tokens.dim(1), N = B * T, C = cfg_.dim;
  LETHE_CHECK(T > 0 && B > 0, op, ": empty batch ", tokens.describe());
  LETHE_CHECK(T <= cfg_.max_seq_len, "sequence length ", T, " exceeds the model's max_seq_len ", cfg_.max_seq_len);
  allocate(B, T);
  have_forward_ = false;
  have_loss_ = false;
  logits_kept_ = false;
  held_ = {-1, -1};
  forward_layers_ = 0;
  if (device_ != Device::cpu && tokens.device() == Device::cpu) check_token_ids(tokens, op);
  tokens_ = on_device(tokens.reshape({N}));
  // The GPU's cast of the master weights to the bf16 copy the forward reads: a no-op for
  // weights that init_weights or the optimizer wrote, a rounding for weights set otherwise.
  // (On a device the weights are stored in bf16.)
  if (precision_ == Precision::bf16 && device_ == Device::cpu) {
    const int64_t changed = round_to_bf16_(params_.flat());
    if (probe_) probe_({"forward", -1, "weights"}, params_.flat(), changed);
  }
  numerics_.check_params(params_, "parameter",
                         "before the forward (it was loaded that way or written by the last update)");
  if (debug_mode() && tp_on()) check_replicas_agree();
  Tensor x0 = resid_.view(0, {N, C});
  if (tp_on()) vocab_parallel_embedding_forward(tokens_, params_[0], vocab_shard(), x0, grid_->tp_group());
  else ops::embedding_forward(tokens_, params_[0], x0);
  numerics_.check(x0, {"forward", -1, "embed_tokens output"});
}

void LlamaModel::check_replicas_agree() {
  // Every rank compares its copy of each replicated parameter with tp rank 0's, and the
  // group agrees on the verdict, so every rank stops with the same error (none waits in a
  // collective that the others left).
  Communicator& tp = grid_->tp_group();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_.spec(i).sharded()) continue;
    const Tensor mine = to_host(params_[i]);
    Tensor first = params_[i].clone();
    tp.broadcast(first, 0);
    const Tensor theirs = to_host(first);
    const int64_t n = mine.numel();
    int64_t at = -1;
    for (int64_t j = 0; j < n && at < 0; ++j)
      if (std::memcmp(static_cast<const char*>(mine.raw()) + j * dtype_size(mine.dtype()),
                      static_cast<const char*>(theirs.raw()) + j * dtype_size(mine.dtype()), dtype_size(mine.dtype())))
        at = j;
    const int64_t worst = tp.all_reduce(at >= 0 ? int64_t(grid_->tp_rank()) : int64_t(-1), ReduceOp::max);
    LETHE_CHECK(worst < 0, params_.spec(i).name, ": tensor-parallel rank ", worst,
                " holds a copy that differs from tp rank 0's (every tp rank must hold this replicated weight "
                "whole and equal; checked in debug mode before each forward)",
                at >= 0 ? " - this rank's first differing element is " + std::to_string(at) : std::string());
  }
}

void LlamaModel::check_token_ids(const Tensor& tokens, const char* op) const {
  // The CPU lookup names a bad id itself; a device's kernel can only write a NaN row.
  const int32_t* id = tokens.data<int32_t>();
  for (int64_t i = 0, n = tokens.numel(); i < n; ++i)
    LETHE_CHECK(id[i] >= 0 && id[i] < cfg_.vocab_size, op, ": token id ", id[i], " at position ", i,
                " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
}

void LlamaModel::run_trunk(const Tensor& tokens, const char* op, const std::function<void(int64_t, Acts&)>& after_layer) {
  begin(tokens, op);
  const int64_t N = B_ * T_, C = cfg_.dim;
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    layer_forward(l, acts_for(l));
    if (after_layer) after_layer(l, acts_for(l));
  }
  ops::rmsnorm_forward(resid_.view(cfg_.n_layers * N * C, {N, C}), params_.get("model.norm.weight"),
                       cfg_.norm_eps, xf_, rstdf_);
  store(xf_, {"forward", -1, "model.norm output"});
  forward_layers_ = cfg_.n_layers;
  have_forward_ = true;
}

void LlamaModel::head_logits(int64_t r0, int64_t r1, Tensor& out, const char* pass) {
  ops::linear_forward(xf_.slice_rows(r0, r1), out_weight(), out);
  store(out, {pass, -1, "lm_head output (logits)"});
}

bool LlamaModel::ensure_rows(Tensor& buf, int64_t rows) const {
  if (buf.defined() && buf.dim(0) >= rows) return false;
  buf = Tensor::empty({rows, tpl_.vocab}, wdt_, device_);
  return true;
}

void LlamaModel::set_loss_chunk_rows(int64_t rows) {
  LETHE_CHECK(rows >= 0, "loss chunk rows must be >= 0 (0: automatic), got ", rows);
  chunk_rows_ = rows;
}

int64_t LlamaModel::loss_chunk_rows() const {
  const int64_t N = std::max<int64_t>(B_ * T_, 1);
  const int64_t R = chunk_rows_ > 0 ? chunk_rows_ : std::max<int64_t>(1, kLossChunkElements / tpl_.vocab);
  return std::min(R, N);
}

const Tensor& LlamaModel::logits() const {
  LETHE_CHECK(logits_kept_, "LlamaModel::logits: the last forward computed its loss in chunks of ", loss_chunk_rows(),
              " rows and kept no [N, V] logits; call forward_logits, or set_keep_logits(true) before forward");
  return logits_;
}

void LlamaModel::forward_trunk(const Tensor& tokens) { run_trunk(tokens, "LlamaModel::forward_trunk"); }

void LlamaModel::logits_rows(int64_t r0, int64_t r1, Tensor& out) {
  LETHE_CHECK(have_forward_, "LlamaModel::logits_rows called without forward_trunk");
  LETHE_CHECK(r0 >= 0 && r0 <= r1 && r1 <= B_ * T_, "LlamaModel::logits_rows: rows [", r0, ", ", r1, ") outside [0, ",
              B_ * T_, ")");
  check_shape(out, {r1 - r0, tpl_.vocab}, "LlamaModel::logits_rows", "out");
  head_logits(r0, r1, out, "forward");
}

void LlamaModel::head_pass(const HeadFn& fn, bool grad) {
  LETHE_CHECK(have_forward_ && forward_layers_ == cfg_.n_layers, "LlamaModel::head_pass called without forward_trunk");
  const int64_t N = B_ * T_, R = loss_chunk_rows();
  ensure_rows(chunk_, R);
  held_ = {-1, -1};  // chunk_ now holds this pass's rows, not the loss path's
  Tensor* d_out_w = nullptr;
  if (grad) {
    ensure_backward_buffers();
    ensure_rows(dchunk_, R);
    d_out_w = cfg_.tie_embeddings ? &grads()[0] : &grads().get("lm_head.weight");
  }
  Tensor head_dx = tp_sum_buffer(dxn_);
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t r1 = std::min(N, r0 + R);
    Tensor lg = chunk_.slice_rows(0, r1 - r0);
    head_logits(r0, r1, lg, "forward");
    if (!grad) {
      fn(r0, lg, nullptr);
      continue;
    }
    Tensor dl = dchunk_.slice_rows(0, r1 - r0);
    fn(r0, lg, &dl);
    numerics_.check(dl, {"backward", -1, "gradient of the loss with respect to the logits",
                         "it came from the unlearning term that the model was given"});
    store(dl, {"backward", -1, "gradient of the loss with respect to the logits"});
    Tensor dx = head_dx.slice_rows(r0, r1);
    ops::linear_backward(dl, xf_.slice_rows(r0, r1), out_weight(), &dx, false, d_out_w);
  }
  if (!grad) return;
  numerics_.check(*d_out_w, {"backward", -1, "gradient of lm_head.weight"});
  backward_from_head(head_dx);
}

const Tensor& LlamaModel::forward_logits(const Tensor& tokens) {
  run_trunk(tokens, "LlamaModel::forward_logits");
  const int64_t N = B_ * T_;
  if (!logits_.defined()) logits_ = Tensor::empty({N, tpl_.vocab}, wdt_, device_);
  head_logits(0, N, logits_, "forward");
  logits_kept_ = true;
  return logits_;
}

const Tensor& LlamaModel::forward_hidden(const Tensor& tokens, int64_t layer) {
  LETHE_CHECK(layer >= 0 && layer < cfg_.n_layers, "forward_hidden: layer ", layer, " outside [0, ", cfg_.n_layers,
              ")");
  begin(tokens, "LlamaModel::forward_hidden");
  for (int64_t l = 0; l <= layer; ++l) layer_forward(l, acts_for(l));
  forward_layers_ = layer + 1;
  hidden_ = resid_.view((layer + 1) * B_ * T_ * cfg_.dim, {B_ * T_, cfg_.dim});
  return hidden_;
}

double LlamaModel::forward(const Tensor& tokens, const Tensor& targets, const Tensor* weights,
                           const LogitsVisitor& visit) {
  const int64_t B = tokens.ndim() == 2 ? tokens.dim(0) : 0, T = tokens.ndim() == 2 ? tokens.dim(1) : 0, N = B * T;
  check_shape(targets, {B, T}, "LlamaModel::forward", "targets");
  check_dtype(targets, DType::i32, "LlamaModel::forward", "targets");
  if (weights) check_shape(*weights, {B, T}, "LlamaModel::forward", "weights");
  run_trunk(tokens, "LlamaModel::forward");
  targets_ = on_device(targets.reshape({N}));
  if (weights) {
    weights_ = as_token_weights(weights->reshape({N}));
  } else {
    // The mean's weights are counted on the host, from the host targets.
    const Tensor host_targets = targets.device() == Device::cpu ? targets.reshape({N}) : targets.to(Device::cpu);
    const int32_t* tg = host_targets.data<int32_t>();
    int64_t valid = 0;
    for (int64_t i = 0; i < N; ++i) valid += tg[i] != ops::kIgnoreIndex;
    valid = grid_->dp_group().all_reduce(valid, ReduceOp::sum);  // the mean is over the global batch
    weights_ = Tensor::zeros({N}, DType::f64);
    double* w = weights_.data<double>();
    for (int64_t i = 0; i < N; ++i) w[i] = (tg[i] != ops::kIgnoreIndex && valid) ? 1.0 / double(valid) : 0.0;
    weights_ = as_token_weights(weights_);
  }
  have_loss_ = true;
  // One chunk of N rows when the logits are kept; otherwise R rows at a time. Each chunk's
  // loss is summed in double, in chunk order: the loss is independent of the thread count.
  // The sum stays where the logits are; a device's is read once, after the last chunk.
  const int64_t R = keep_logits_ ? N : loss_chunk_rows();
  if (keep_logits_ && !logits_.defined()) logits_ = Tensor::empty({N, tpl_.vocab}, wdt_, device_);
  if (!keep_logits_ && ensure_rows(chunk_, R)) held_ = {-1, -1};
  Tensor loss_sum = Tensor::zeros({1}, DType::f64, device_);
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t r1 = std::min(N, r0 + R);
    Tensor lg = keep_logits_ ? logits_ : chunk_.slice_rows(0, r1 - r0);
    head_logits(r0, r1, lg, "forward");
    if (!keep_logits_) held_ = {r0, r1};
    const Tensor tg = targets_.slice_rows(r0, r1), w = weights_.slice_rows(r0, r1);
    Tensor lp = logprobs_.slice_rows(r0, r1), lse = lse_.slice_rows(r0, r1);
    if (tp_on()) vocab_parallel_cross_entropy_forward(lg, tg, w, vocab_shard(), lp, lse, loss_sum, grid_->tp_group());
    else ops::cross_entropy_forward(lg, tg, w, lp, lse, loss_sum);
    if (visit) visit(r0, lg);
  }
  logits_kept_ = keep_logits_;
  const double loss = to_host(loss_sum).data<double>()[0];
  return grid_->dp_group().all_reduce(loss, ReduceOp::sum);
}

void LlamaModel::layer_backward(int64_t l, Acts& a, Tensor& dres) {
  const LayerW w = layer(params_, l);
  LayerW g = layer(grads(), l);
  const int64_t N = B_ * T_, C = cfg_.dim;
  const Tensor x = resid_.view(l * N * C, {N, C});
  const Shape q2{N, q_dim()}, kv2{N, tpl_.kv_heads * cfg_.hd()};
  // Weight gradients are checked (f32 under bf16, never rounded); activation gradients
  // are stored (bf16: rounded, as the GPU stores them in bf16 buffers).
  auto check = [&](const Tensor& t, const char* what) { numerics_.check(t, {"backward", l, what}); };
  auto put = [&](Tensor& t, const char* what) { store(t, {"backward", l, what}); };

  // MLP half: dres holds d(out); after rmsnorm_backward it holds d(x2).
  ops::linear_backward(dres, a.a, w.wd, &da_, false, &g.wd);
  check(g.wd, "gradient of mlp.down_proj.weight");
  put(da_, "gradient of the SwiGLU output");
  ops::swiglu_backward(da_, a.gu, dgu_);
  put(dgu_, "gradient of the mlp.gate_proj and mlp.up_proj output");
  // One product over both projections: bf16 rounds the sum of both once.
  Tensor dxn_sum = tp_sum_buffer(dxn_);
  ops::linear_backward(dgu_, a.xn2, w.wgu, &dxn_sum, false, &g.wgu);
  check(g.wg, "gradient of mlp.gate_proj.weight");
  check(g.wu, "gradient of mlp.up_proj.weight");
  finish_tp_sum(dxn_sum, dxn_, false);
  put(dxn_, "gradient of the post_attention_layernorm output");
  ops::rmsnorm_backward(dxn_, a.x2, w.mlp_norm, a.rstd2, dres, true, g.mlp_norm);
  check(g.mlp_norm, "gradient of post_attention_layernorm.weight");
  put(dres, "gradient of the residual stream after attention");

  // Attention half: after rmsnorm_backward dres holds d(x).
  Tensor dO = dtmp_.reshape({B_, T_, tpl_.heads, cfg_.hd()});
  ops::linear_backward(dres, a.o.reshape(q2), w.wo, &dtmp_, false, &g.wo);
  check(g.wo, "gradient of self_attn.o_proj.weight");
  put(dtmp_, "gradient of the attention output");
  ops::attention_backward(dO, a.q, a.k, a.v, a.o, a.lse, 1.0 / std::sqrt(double(cfg_.hd())), dq_, dk_, dv_,
                          precision_);
  put(dq_, "gradient of the attention's q");
  put(dk_, "gradient of the attention's k");
  put(dv_, "gradient of the attention's v");
  Tensor dxn1 = dxn_;
  if (!tpl_.kv_replicated) {
    // One dx and one dW product over q, k and v: bf16 rounds the sum of all three once.
    ops::qkv_merge_rope_backward(dq_, dk_, dv_, cos_, sin_, qkv_);
    put(qkv_, "gradient of the q_proj, k_proj and v_proj output");
    Tensor dxn1_sum = tp_sum_buffer(dxn1);
    ops::linear_backward(qkv_, a.xn1, w.wqkv, &dxn1_sum, false, &g.wqkv);
    finish_tp_sum(dxn1_sum, dxn1, false);
    check(g.wq, "gradient of self_attn.q_proj.weight");
  } else {
    ops::rope_backward(dq_, cos_, sin_, dq_);
    put(dq_, "gradient of q before RoPE");
    ops::rope_backward(dk_, cos_, sin_, dk_);
    put(dk_, "gradient of k before RoPE");
    ops::linear_backward(dq_.reshape(q2), a.xn1, w.wq, &dxn1, false, &g.wq);
    check(g.wq, "gradient of self_attn.q_proj.weight");
    put(dxn1, "gradient of the input_layernorm output through q_proj");
    // Replicated k/v (CPU only): each rank's dW covers its query heads only, so this pass's
    // share is summed over tp.
    for (auto [dexp, wt, gw] : {std::tuple{&dk_, &w.wk, &g.wk}, std::tuple{&dv_, &w.wv, &g.wv}}) {
      collapse_kv(dexp->reshape(kv2), dkv_full_);
      put(dkv_full_, "gradient of the k/v projection output (repeated heads summed)");
      dw_kv_.zero_();
      ops::linear_backward(dkv_full_, a.xn1, *wt, &dxn1, true, &dw_kv_);
      reduce_replicated_grad(*grid_, dw_kv_);
      ops::add_(*gw, dw_kv_);
      if (dexp == &dk_) put(dxn1, "gradient of the input_layernorm output through q_proj and k_proj");
    }
    copy_to_tp_region_backward(*grid_, dxn1);  // (CPU only: see the constructor)
  }
  check(g.wk, "gradient of self_attn.k_proj.weight");
  check(g.wv, "gradient of self_attn.v_proj.weight");
  put(dxn1, "gradient of the input_layernorm output");
  ops::rmsnorm_backward(dxn1, x, w.attn_norm, a.rstd1, dres, true, g.attn_norm);
  check(g.attn_norm, "gradient of input_layernorm.weight");
  agree_replicated_grads({&g.attn_norm, &g.mlp_norm});
  put(dres, "gradient of the layer input (residual stream)");
}

void LlamaModel::ensure_backward_buffers() {
  const int64_t N = B_ * T_, C = cfg_.dim, F = tpl_.ffn, H = tpl_.heads, KV = tpl_.kv_heads, D = cfg_.hd();
  const DType dt = wdt_;
  const Device dev = device_;
  if (dres_.defined() && dres_.dim(0) == N) return;
  dres_ = Tensor::empty({N, C}, dt, dev);
  dtmp_ = Tensor::empty({N, q_dim()}, dt, dev);
  dxn_ = Tensor::empty({N, C}, dt, dev);
  dq_ = Tensor::empty({B_, T_, H, D}, dt, dev);
  dk_ = Tensor::empty({B_, T_, KV, D}, dt, dev);
  dv_ = Tensor::empty({B_, T_, KV, D}, dt, dev);
  dgu_ = Tensor::empty({N, 2 * F}, dt, dev);
  da_ = Tensor::empty({N, F}, dt, dev);
  dlogits_ = Tensor();  // whole-logits gradient: allocated on use (backward_logits under bf16)
  if (tpl_.kv_replicated) {
    dkv_full_ = Tensor::empty({N, kv_proj_dim()}, dt);
    dw_kv_ = Tensor::empty({kv_proj_dim(), C}, dt);
  }
}

ParamSet& LlamaModel::grads() {
  if (grads_.size() == 0) grads_ = ParamSet(llama_param_specs(cfg_, tpl_), gdt_, device_);
  return grads_;
}

void LlamaModel::release_training_state() {
  grads_ = ParamSet();
  for (Tensor* t : {&dres_, &dtmp_, &dxn_, &dq_, &dk_, &dv_, &dgu_, &da_, &dlogits_, &dchunk_, &dkv_full_, &dw_kv_})
    *t = Tensor();
}

void LlamaModel::backward_layers(int64_t top) {
  for (int64_t l = top; l >= 0; --l) {
    Acts& a = acts_for(l);
    if (l < stored_rc_) layer_forward(l, a);  // rewrites resid_[l+1] with identical values
    layer_backward(l, a, dres_);
    if (grad_ready_) grad_ready_(1 + size_t(l) * 9);
  }
  if (tp_on()) vocab_parallel_embedding_backward(tokens_, dres_, vocab_shard(), grads()[0]);
  else ops::embedding_backward(tokens_, dres_, grads()[0]);
  numerics_.check(grads()[0], {"backward", -1, "gradient of embed_tokens.weight"});
  if (grad_ready_) grad_ready_(0);
}

void LlamaModel::backward(double dloss, const Tensor* weights) {
  LETHE_CHECK(have_forward_ && have_loss_, "LlamaModel::backward called without a forward with targets");
  const int64_t N = B_ * T_;
  Tensor w = weights_;
  if (weights) {
    check_shape(*weights, {B_, T_}, "LlamaModel::backward", "weights");
    w = as_token_weights(weights->reshape({N}));
  }
  ensure_backward_buffers();
  if (logits_kept_) {
    if (!dlogits_.defined()) dlogits_ = Tensor::empty({N, tpl_.vocab}, wdt_, device_);
    if (tp_on()) vocab_parallel_cross_entropy_backward(logits_, targets_, w, lse_, vocab_shard(), dloss, dlogits_);
    else ops::cross_entropy_backward(logits_, targets_, w, lse_, dloss, dlogits_);
    backward_logits(dlogits_);
    return;
  }
  // The LM head and the cross-entropy backward, chunk by chunk: d(logits) is formed and
  // stored (bf16: rounded, as for the whole logits) and consumed at once. The chunk the
  // forward computed last still holds its logits and goes first; the others' logits are
  // recomputed (bit-identical to the forward's: the same product of the same rows, rounded
  // alike). One chunk (N <= R, every CPU run here) recomputes nothing.
  const int64_t R = loss_chunk_rows();
  if (ensure_rows(chunk_, R)) held_ = {-1, -1};
  ensure_rows(dchunk_, R);
  Tensor& d_out_w = cfg_.tie_embeddings ? grads()[0] : grads().get("lm_head.weight");
  Tensor head_dx = tp_sum_buffer(dxn_);
  const std::pair<int64_t, int64_t> kept = held_;
  const bool reuse = kept.first >= 0 && kept.first % R == 0 && kept.second == std::min(N, kept.first + R);
  std::vector<std::pair<int64_t, int64_t>> order;
  if (reuse) order.push_back(kept);
  for (int64_t r0 = 0; r0 < N; r0 += R)
    if (!reuse || r0 != kept.first) order.emplace_back(r0, std::min(N, r0 + R));
  for (const auto& [r0, r1] : order) {
    Tensor lg = chunk_.slice_rows(0, r1 - r0), dl = dchunk_.slice_rows(0, r1 - r0);
    if (!(reuse && r0 == kept.first)) {
      head_logits(r0, r1, lg, "backward");
      held_ = {r0, r1};
    }
    const Tensor tg = targets_.slice_rows(r0, r1), wc = w.slice_rows(r0, r1), lse = lse_.slice_rows(r0, r1);
    if (tp_on()) vocab_parallel_cross_entropy_backward(lg, tg, wc, lse, vocab_shard(), dloss, dl);
    else ops::cross_entropy_backward(lg, tg, wc, lse, dloss, dl);
    store(dl, {"backward", -1, "gradient of the loss with respect to the logits"});
    Tensor dx = head_dx.slice_rows(r0, r1);
    ops::linear_backward(dl, xf_.slice_rows(r0, r1), out_weight(), &dx, false, &d_out_w);
  }
  numerics_.check(d_out_w, {"backward", -1, "gradient of lm_head.weight"});
  backward_from_head(head_dx);
}

void LlamaModel::backward_logits(const Tensor& dlogits) {
  LETHE_CHECK(have_forward_ && forward_layers_ == cfg_.n_layers,
              "LlamaModel::backward_logits called without a full forward");
  const int64_t N = B_ * T_;
  check_shape(dlogits, {N, tpl_.vocab}, "LlamaModel::backward_logits", "dlogits");
  ensure_backward_buffers();
  numerics_.check(dlogits, {"backward", -1, "gradient of the loss with respect to the logits",
                            "it came from the loss (or the unlearning term) that the model was given"});
  // bf16: the loss gradient is stored in bf16 before the LM head reads it, as the GPU's
  // cross-entropy (or the unlearning term that made it) writes it.
  const Tensor* dl = &dlogits;
  if (precision_ == Precision::bf16) {
    if (!dlogits_.defined()) dlogits_ = Tensor::empty({N, tpl_.vocab}, wdt_, device_);
    if (&dlogits != &dlogits_) dlogits_.copy_from(dlogits);
    store(dlogits_, {"backward", -1, "gradient of the loss with respect to the logits"});
    dl = &dlogits_;
  }
  Tensor& d_out_w = cfg_.tie_embeddings ? grads()[0] : grads().get("lm_head.weight");
  Tensor head_dx = tp_sum_buffer(dxn_);
  ops::linear_backward(*dl, xf_, out_weight(), &head_dx, false, &d_out_w);
  numerics_.check(d_out_w, {"backward", -1, "gradient of lm_head.weight"});
  backward_from_head(head_dx);
}

void LlamaModel::backward_from_head(Tensor& head_dx) {
  const int64_t N = B_ * T_, C = cfg_.dim;
  finish_tp_sum(head_dx, dxn_, false);
  store(dxn_, {"backward", -1, "gradient of the model.norm output"});
  ops::rmsnorm_backward(dxn_, resid_.view(cfg_.n_layers * N * C, {N, C}), params_.get("model.norm.weight"), rstdf_,
                        dres_, false, grads().get("model.norm.weight"));
  numerics_.check(grads().get("model.norm.weight"), {"backward", -1, "gradient of model.norm.weight"});
  agree_replicated_grads({&grads().get("model.norm.weight")});
  store(dres_, {"backward", -1, "gradient of the final residual stream"});
  backward_layers(cfg_.n_layers - 1);
}

void LlamaModel::backward_hidden(const Tensor& dhidden) {
  LETHE_CHECK(forward_layers_ > 0 && !have_forward_, "LlamaModel::backward_hidden called without forward_hidden");
  check_shape(dhidden, {B_ * T_, cfg_.dim}, "LlamaModel::backward_hidden", "dhidden");
  ensure_backward_buffers();
  numerics_.check(dhidden, {"backward", forward_layers_ - 1, "gradient of the loss with respect to the layer output",
                            "it came from the loss (or the unlearning term) that the model was given"});
  dres_.copy_from(dhidden);
  if (precision_ == Precision::bf16)
    store(dres_, {"backward", forward_layers_ - 1, "gradient of the loss with respect to the layer output"});
  backward_layers(forward_layers_ - 1);
}

}  // namespace lethe
