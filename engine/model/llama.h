// The Llama-family decoder: forward (logits, loss, per-token log-probs) and a
// hand-written backward that fills every parameter's gradient. Activations are kept
// per layer, or, for the layers chosen with `set_recompute_layers`, only the layer's input
// is kept and the layer is recomputed in the backward. Parameter names are transformers'.
//
// Parallelism (engine/parallel): given a ProcessGrid, the model holds this tp rank's
// slices (tp_layout.h) and communicates as Megatron-LM does: one all-reduce after each
// row-parallel projection in the forward, one after each column-parallel input gradient
// in the backward, vocabulary-parallel embedding and loss. Across dp ranks every rank runs
// its own rows of the global batch; forward() returns the loss of the whole global batch
// and the gradients are this rank's share (the optimizer sums them over dp).
//
// Precision (docs/cuda.md, "Mixed precision"): Precision::bf16 is the GPU engine's policy
// emulated exactly on f32 tensors. The weights, every activation and every activation
// gradient are rounded to bf16 (nearest even) where the GPU stores them as bf16, and the
// attention rounds P and dS as its kernels do; products accumulate in f32 (bf16 x bf16
// products are exact in f32), norm statistics, softmax statistics and log-probs stay f32,
// weight gradients are f32 and never rounded, the loss is summed in double. The fp32
// master weights live in the optimizer, which writes back the weights rounded to bf16.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "engine/core/precision.h"
#include "engine/core/tensor.h"
#include "engine/model/llama_config.h"
#include "engine/model/numerics_guard.h"
#include "engine/model/param_set.h"
#include "engine/model/tp_layout.h"
#include "engine/parallel/grid.h"
#include "engine/parallel/vocab_parallel.h"

namespace lethe {

// Names and shapes of the model's parameters, in transformers' order and naming.
std::vector<ParamSpec> llama_param_specs(const LlamaConfig& cfg);

class LlamaModel {
 public:
  // dtype: f32 for training on CPU, f64 for reference and gradient checks. grid: the
  // process grid (null: one process).
  explicit LlamaModel(const LlamaConfig& cfg, DType dtype = DType::f32, std::shared_ptr<ProcessGrid> grid = nullptr);
  // Precision::bf16: f32 tensors holding bf16 values, rounded where the GPU rounds;
  // Precision::f32: the same as LlamaModel(cfg, DType::f32, grid).
  // On a device (Device::cuda) the model's tensors live in device memory and every op runs
  // there (kernels/device_ops.h). The device runs the bf16 policy in its own dtypes:
  // weights and activations bf16, statistics (norm rstd, attention lse, log-probs) and token
  // weights f32, weight gradients f32. Tensor parallelism runs on a device when tp divides
  // the key/value heads; replicating them across tp ranks is CPU-only (an error).
  LlamaModel(const LlamaConfig& cfg, Precision precision, std::shared_ptr<ProcessGrid> grid = nullptr,
             Device device = Device::cpu);

  const LlamaConfig& config() const { return cfg_; }
  DType dtype() const { return dtype_; }  // compute dtype: f32 under Precision::bf16
  Device device() const { return device_; }
  // Storage dtypes: weights and activations (bf16 on a device, dtype() on the CPU), and
  // statistics and weight gradients (f32 on a device, dtype() on the CPU).
  DType storage_dtype() const { return wdt_; }
  DType stat_dtype() const { return sdt_; }
  Precision precision() const { return precision_; }
  ParamSet& params() { return params_; }
  const ParamSet& params() const { return params_; }
  // Weight gradients, allocated on first use (the optimizer taking them, or the first
  // backward): a model that is only run forward (a frozen reference, an oracle or the
  // original being scored) holds none, which at 7B is 25 GiB of fp32 on a device.
  ParamSet& grads();
  // Frees the gradients and the backward's scratch (a model only evaluated from here on;
  // a later backward allocates them again, zeroed). The optimizer, which holds the
  // gradients, must be released first.
  void release_training_state();
  ProcessGrid& grid() const { return *grid_; }
  const TpLayout& tp_layout() const { return tpl_; }
  // This rank's columns of the logits: [vocab_start, vocab_start + Vr) of vocab_size.
  VocabShard vocab_shard() const { return {tpl_.vocab_start, tpl_.vocab, cfg_.vocab_size}; }
  // NaN / Inf locator, on under LETHE_DEBUG=1 (numerics_guard.h).
  NumericsGuard& numerics() { return numerics_; }
  // Called during backward with an index i once every parameter from i on holds its final
  // gradient for this pass (the data-parallel reducer starts all-reduces from it).
  void set_grad_ready_hook(std::function<void(size_t)> hook) { grad_ready_ = std::move(hook); }
  // Under Precision::bf16, called at every rounding point after the tensor was rounded:
  // where (the NumericsGuard site naming it), the tensor, and how many of its elements the
  // rounding changed. Tests use it to see that each rounding point exists and rounds.
  using RoundingProbe = std::function<void(const NumericsGuard::Site&, const Tensor&, int64_t changed)>;
  void set_rounding_probe(RoundingProbe probe) { probe_ = std::move(probe); }

  // transformers' initialisation: N(0, init_std) for matrices and embeddings, 1 for norms.
  // Counter-based: the same seed gives the same weights on any thread count. Under
  // Precision::bf16 the weights are then rounded to bf16.
  void init_weights(uint64_t seed);

  // Recompute every layer (true) or none (false) in the backward.
  void set_recompute(bool on) { set_recompute_layers(on ? cfg_.n_layers : 0); }
  // Recompute the first n layers (Megatron's "uniform" choice: early layers first) and keep
  // the activations of the rest. 0 <= n <= n_layers.
  void set_recompute_layers(int64_t n);
  int64_t recompute_layers() const { return recompute_layers_; }
  // Forward-only: a forward keeps one layer's activations instead of every layer's, as
  // when every layer is recomputed, for a model that is only evaluated (a frozen reference,
  // the original and the oracle being scored, an evaluation of the trained model; at 7B
  // and 8 x 4096 tokens that is about 3 GiB instead of 100). The numbers are the same. A backward
  // after such a forward still works: it recomputes every layer, as recomputation does.
  void set_forward_only(bool on) { forward_only_ = on; }
  bool forward_only() const { return forward_only_; }

  // The loss path (forward / backward) runs the LM head and the cross-entropy over R rows
  // of logits at a time, so the whole [N, V] logits never exist (on a GPU they would be the
  // largest activation: 4096 x 32000 bf16 is 262 MB per sequence). backward() recomputes
  // each chunk's logits from the kept final-norm output rather than keeping them: 2 R C V
  // extra flops per chunk, about 1% of a Llama-2-7B step. 0 (the default) picks
  // R = kLossChunkElements / (V / tp) rows; tests set a small R to cross chunk edges.
  static constexpr int64_t kLossChunkElements = int64_t(1) << 25;  // 128 MiB of f32 logits
  void set_loss_chunk_rows(int64_t rows);
  int64_t loss_chunk_rows() const;  // R for the current batch
  // forward() keeps the whole [N, V] logits for logits(): for tests and tools that inspect
  // them (one chunk of N rows; the results are the same).
  void set_keep_logits(bool on) { keep_logits_ = on; }
  // Sees each chunk of logits during forward(): row0 is its first row in [0, B*T), logits
  // its [R, V] (or [R, V/tp]) rows as stored. Evaluation reads argmax and Min-K%++
  // moments this way. Under tp every rank visits the same chunks (collectives may run).
  using LogitsVisitor = std::function<void(int64_t row0, const Tensor& logits)>;

  // tokens, targets [B, T] i32 (targets use ops::kIgnoreIndex to mask). weights [B, T]
  // (f32 or f64) gives loss = -sum w * logp; when absent, the loss is the mean NLL over
  // unmasked targets, as transformers computes it. Returns the loss. Under data
  // parallelism B is this rank's rows; the mean is over the unmasked targets of all dp
  // ranks and the returned loss is the global batch's (summed over dp).
  double forward(const Tensor& tokens, const Tensor& targets, const Tensor* weights = nullptr,
                 const LogitsVisitor& visit = nullptr);

  // Adds d(loss * dloss)/d(param) into grads() for the last forward. `weights` [B, T]
  // (f32 or f64) replaces the forward's token weights for this backward: a term that picks
  // its weights from the forward's log-probs (WGA, flood) runs one forward. The gradient of
  // -sum w logp is linear in w, so this equals a forward with those weights.
  void backward(double dloss = 1.0, const Tensor* weights = nullptr);

  // The whole logits ([B*T, V], or this rank's [B*T, V/tp] under tensor parallelism); the
  // caller computes its own loss and passes d(loss)/d(logits) to backward_logits, which adds
  // into grads(). For tests and tools: the engine's terms use the chunked head below.
  const Tensor& forward_logits(const Tensor& tokens);
  void backward_logits(const Tensor& dlogits);

  // The head in chunks, for terms that read more than the loss (KL to a reference, UNDIAL,
  // labels drawn from a reference): forward_trunk runs the layers and the final norm, and
  // no logits; head_pass then computes the logits R rows at a time (loss_chunk_rows) and
  // hands each chunk to fn. With grad, fn writes d(term)/d(logits) of its rows into
  // *dlogits and the model backpropagates it through the LM head at once, then, after the
  // last chunk, through the layers (adding into grads(), as backward_logits does). Under tp
  // every rank visits the same chunks, so fn may run collectives.
  void forward_trunk(const Tensor& tokens);
  using HeadFn = std::function<void(int64_t row0, const Tensor& logits, Tensor* dlogits)>;
  void head_pass(const HeadFn& fn, bool grad);
  // Rows [r0, r1) of the logits of the last forward_trunk into out [r1 - r0, V/tp], stored
  // as the forward stores logits (bf16: rounded). A frozen reference serves its partner's
  // head_pass chunk by chunk this way.
  void logits_rows(int64_t r0, int64_t r1, Tensor& out);
  // The residual stream after `layer` ([B*T, dim]), running only layers 0..layer; and the
  // backward from d(loss)/d(that stream), adding into grads() of those layers and the
  // embedding. RMU's activation terms use this.
  const Tensor& forward_hidden(const Tensor& tokens, int64_t layer);
  void backward_hidden(const Tensor& dhidden);

  // [B*T, V] ([B*T, V/tp] under tp), after forward_logits or a forward with keep_logits;
  // an error otherwise (the loss path kept no logits).
  const Tensor& logits() const;

  // Tensors passed to forward, backward and decoding may be on the CPU or on the model's
  // device; CPU inputs are copied over. Outputs (logits, logprobs) are on the model's device.

  // Greedy decoding with a key/value cache (engine/model/llama_decode.cpp). decode_prefill
  // runs tokens [B, T0] at positions 0..T0-1, keeps every layer's k (after RoPE) and v for
  // up to max_seq_len positions, and writes each sequence's last-position logits into
  // logits [B, V/tp]. decode_step runs one more token per sequence (next [B] i32) at the
  // next position, attending to the cache, and writes its logits. Inference only: nothing
  // is kept for a backward, and the next forward or prefill starts afresh. Each new token
  // costs one position's work instead of a forward over the whole context.
  void decode_prefill(const Tensor& tokens, Tensor& logits);
  void decode_step(const Tensor& next, Tensor& logits);
  // Replaces the cache by `copies` copies of its sequence 0, so one prefix prefilled once
  // continues in many ways (canary exposure scores every candidate after one prefix);
  // decode_step then takes [copies] tokens. Each copy holds max_seq_len positions.
  void decode_fork(int64_t copies);
  int64_t decode_cache_bytes_per_sequence() const;
  int64_t decode_length() const { return decode_len_; }  // positions in the cache

  const Tensor& logprobs() const { return logprobs_; }  // [B*T], 0 where masked
  int64_t tokens_in_last_batch() const { return B_ * T_; }

 private:
  // Fused projections: q/k/v_proj, and gate/up_proj, lie next to each other in the flat
  // buffer, so wqkv = [W_q; W_k; W_v] ([q + 2 kv, C]) and wgu = [W_gate; W_up] ([2F, C]) are
  // views of them: each group runs as one GEMM, and its backward as one dx and one dW
  // product, while every weight keeps its own name and checkpoint entry.
  struct LayerW {
    Tensor attn_norm, wq, wk, wv, wo, mlp_norm, wg, wu, wd, wqkv, wgu;
  };
  struct Acts {
    Tensor xn1, rstd1, q, k, v, o, lse, x2, xn2, rstd2, gu, a;  // gu [N, 2F]: gate, then up
  };
  // Local widths: this rank's share under tensor parallelism, the config's otherwise.
  int64_t q_dim() const { return tpl_.heads * cfg_.hd(); }
  int64_t kv_proj_dim() const { return tpl_.kv_proj_heads * cfg_.hd(); }
  bool tp_on() const { return tpl_.tp > 1; }
  // Replicated k/v (n_kv_heads % tp != 0): project all kv heads, then repeat the one each
  // local query head reads; the backward sums the repeats back.
  void expand_kv(const Tensor& full, Tensor& out) const;
  void collapse_kv(const Tensor& d_exp, Tensor& d_full) const;

  LayerW layer(ParamSet& set, int64_t l);
  void allocate(int64_t B, int64_t T);
  void layer_forward(int64_t l, Acts& a);
  Acts make_acts(int64_t B, int64_t T) const;
  // Where a layer reads and writes besides its activations: its input and output rows of
  // the residual stream, scratch for the projections' outputs, and the RoPE tables of the
  // positions it runs.
  // qkv: the fused q/k/v projection's output [N, q + 2 kv] (not with replicated k/v, which
  // projects k and v apart), split into the layer's q, k, v at once.
  struct LayerIO {
    Tensor x, out, tmp, kv_full, qkv, cos, sin;
  };
  void layer_ops(int64_t l, Acts& a, const LayerIO& io, const std::function<void(Acts&)>& attend);
  void layer_backward(int64_t l, Acts& a, Tensor& dres);
  void begin(const Tensor& tokens, const char* op);
  void check_token_ids(const Tensor& tokens, const char* op) const;  // host tokens
  // Debug mode under tp: the replicated parameters (the norms) equal on every tp rank.
  void check_replicas_agree();
  // An op's output is stored: rounded to bf16 under Precision::bf16 (the GPU's bf16
  // buffer), then checked for NaN / Inf.
  void store(Tensor& t, const NumericsGuard::Site& site);
  // For an op that stored (bf16: rounded) its output itself, `changed` elements of it.
  void stored(const Tensor& t, const NumericsGuard::Site& site, int64_t changed);
  void ensure_backward_buffers();
  // Layers, then the final norm into xf_ (the LM head's input).
  void run_trunk(const Tensor& tokens, const char* op, const std::function<void(int64_t, Acts&)>& after_layer = {});
  // logits rows [r0, r1) = xf_ rows x out_weight()^T into `out`, stored (bf16: rounded).
  void head_logits(int64_t r0, int64_t r1, Tensor& out, const char* pass);
  // From d(loss)/d(xf_) (the LM head's input gradient, in head_dx = tp_sum_buffer(dxn_))
  // down to the embedding.
  void backward_from_head(Tensor& head_dx);
  // Tensor-parallel sums under the bf16 policy round once, after the all-reduce: the
  // emulation forms each in its f32 tensors, and on a device the partials go to an f32
  // buffer (red_), are all-reduced in f32 and rounded into the bf16 destination (the
  // policy's fp32 reductions). tp_sum_buffer(t): where a sum shaped like t is formed (t
  // itself on the CPU or without tp); finish_tp_sum: the all-reduce (forward: a
  // row-parallel output, backward: a column-parallel input's gradient), then the copy into
  // dst when distinct.
  Tensor tp_sum_buffer(const Tensor& like);
  void finish_tp_sum(Tensor& buf, Tensor& dst, bool forward);
  // On a device under tp: the replicated norm weights' gradients made identical across
  // the tp group (rank 0's), before the data-parallel reduction reads them.
  void agree_replicated_grads(std::initializer_list<Tensor*> grads);
  // y = x w^T summed over the tp group (a row-parallel linear).
  void row_parallel_linear(const Tensor& x, const Tensor& w, Tensor& y);
  // buf holds at least `rows` rows of [., V/tp] logits; true when it was (re)allocated.
  bool ensure_rows(Tensor& buf, int64_t rows) const;
  void backward_layers(int64_t top);
  const Tensor& out_weight() { return cfg_.tie_embeddings ? params_[0] : params_.get("lm_head.weight"); }

  // Tokens, targets or token weights on the model's device (a copy when they are not);
  // weights in the stat dtype (f32 under the bf16 policy: the GPU's cross-entropy reads f32).
  Tensor on_device(const Tensor& t) const;
  Tensor as_token_weights(const Tensor& w) const;

  LlamaConfig cfg_;
  DType dtype_;
  Device device_ = Device::cpu;
  DType wdt_, sdt_;  // storage dtypes: weights / activations, statistics / weight gradients
  Precision precision_ = Precision::f32;
  RoundingProbe probe_;
  std::shared_ptr<ProcessGrid> grid_;
  TpLayout tpl_;
  std::function<void(size_t)> grad_ready_;
  NumericsGuard numerics_;
  ParamSet params_, grads_;  // grads_: empty until grads() allocates it
  DType gdt_ = DType::f32;   // the gradients' dtype
  int64_t recompute_layers_ = 0;
  bool forward_only_ = false;
  int64_t stored_rc_ = 0;  // the layers the last allocation recomputes: recompute_layers_, or all when forward-only
  std::vector<double> inv_freq_;

  // Per-batch state.
  int64_t B_ = 0, T_ = 0;
  Tensor tokens_, targets_, weights_;
  Tensor resid_;  // [L+1, N, C]: input of each layer, and the final stream
  std::vector<Acts> acts_;  // one per stored layer, plus one scratch set shared by recomputed layers
  Acts& acts_for(int64_t l) {
    return l < stored_rc_ ? acts_.back() : acts_[size_t(l - stored_rc_)];
  }
  Tensor tmp_, xf_, rstdf_, logprobs_, lse_, cos_, sin_;
  Tensor logits_;           // [N, V/tp]: forward_logits, or forward with keep_logits_ (allocated on use)
  Tensor chunk_, dchunk_;   // [R, V/tp]: the loss path's logits and their gradient
  int64_t chunk_rows_ = 0;  // set_loss_chunk_rows (0: automatic)
  std::pair<int64_t, int64_t> held_{-1, -1};  // the rows whose logits chunk_ holds (the loss path's)
  bool keep_logits_ = false;
  // Decoding: per layer k and v [B, max_seq_len, KV/tp, D], RoPE tables for every position,
  // one position's activations.
  std::vector<Tensor> cache_k_, cache_v_;
  Tensor dec_cos_, dec_sin_;
  Acts dec_acts_;                     // one position per sequence
  Tensor dec_x_, dec_out_, dec_tmp_, dec_kv_full_, dec_qkv_;
  int64_t decode_len_ = 0, decode_B_ = 0;
  void decode_position(Tensor& x, Tensor& logits);  // x [B, C]: the new position's embedding
  bool logits_kept_ = false;  // logits_ holds the last forward's logits
  // Backward scratch.
  Tensor dres_, dtmp_, dxn_, dq_, dk_, dv_, dgu_, da_, dlogits_;
  Tensor kv_full_, dkv_full_, dw_kv_;  // replicated k/v only
  // [N, q + 2 kv]: the fused q/k/v projection's output in the forward, and its dy in the
  // backward (each consumed within its layer's pass); not with replicated k/v.
  Tensor qkv_;
  Tensor red_;                         // f32 scratch of the tp sums on a device
  bool have_forward_ = false;  // a full forward (logits) is stored
  bool have_loss_ = false;     // ...with targets and weights, for backward()
  int64_t forward_layers_ = 0; // layers run by the last forward
  Tensor hidden_;
};

// Makes a model forward-only for a scope (an evaluation of the model being trained) and
// restores what it was.
class ForwardOnlyScope {
 public:
  explicit ForwardOnlyScope(LlamaModel& m) : m_(m), was_(m.forward_only()) { m_.set_forward_only(true); }
  ~ForwardOnlyScope() { m_.set_forward_only(was_); }
  ForwardOnlyScope(const ForwardOnlyScope&) = delete;
  ForwardOnlyScope& operator=(const ForwardOnlyScope&) = delete;

 private:
  LlamaModel& m_;
  bool was_;
};

}  // namespace lethe
