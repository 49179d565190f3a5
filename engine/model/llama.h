// The Llama-family decoder: forward (logits, loss, per-token log-probs) and a
// hand-written backward that fills every parameter's gradient. Activations are kept
// per layer, or, for the layers chosen with `set_recompute_layers`, only the layer's input
// is kept and the layer is recomputed in the backward. Parameter names are transformers'.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/model/llama_config.h"
#include "engine/model/param_set.h"

namespace lethe {

// Names and shapes of the model's parameters, in transformers' order and naming.
std::vector<ParamSpec> llama_param_specs(const LlamaConfig& cfg);

class LlamaModel {
 public:
  // dtype: f32 for training on CPU, f64 for reference and gradient checks.
  explicit LlamaModel(const LlamaConfig& cfg, DType dtype = DType::f32);

  const LlamaConfig& config() const { return cfg_; }
  DType dtype() const { return dtype_; }
  ParamSet& params() { return params_; }
  const ParamSet& params() const { return params_; }
  ParamSet& grads() { return grads_; }

  // transformers' initialisation: N(0, init_std) for matrices and embeddings, 1 for norms.
  // Counter-based: the same seed gives the same weights on any thread count.
  void init_weights(uint64_t seed);

  // Recompute every layer (true) or none (false) in the backward.
  void set_recompute(bool on) { set_recompute_layers(on ? cfg_.n_layers : 0); }
  // Recompute the first n layers (Megatron's "uniform" choice: early layers first) and keep
  // the activations of the rest. 0 <= n <= n_layers.
  void set_recompute_layers(int64_t n);
  int64_t recompute_layers() const { return recompute_layers_; }

  // tokens, targets [B, T] i32 (targets use ops::kIgnoreIndex to mask). weights [B, T]
  // (f32 or f64) gives loss = -sum w * logp; when absent, the loss is the mean NLL over
  // unmasked targets, as transformers computes it. Returns the loss.
  double forward(const Tensor& tokens, const Tensor& targets, const Tensor* weights = nullptr);

  // Adds d(loss * dloss)/d(param) into grads() for the last forward.
  void backward(double dloss = 1.0);

  // Logits only ([B*T, V]); the caller computes its own loss and passes d(loss)/d(logits)
  // to backward_logits, which adds into grads(). The unlearning terms (KL, NPO, ...) use this.
  const Tensor& forward_logits(const Tensor& tokens);
  void backward_logits(const Tensor& dlogits);
  // The residual stream after `layer` ([B*T, dim]), running only layers 0..layer; and the
  // backward from d(loss)/d(that stream), adding into grads() of those layers and the
  // embedding. RMU's activation terms use this.
  const Tensor& forward_hidden(const Tensor& tokens, int64_t layer);
  void backward_hidden(const Tensor& dhidden);

  const Tensor& logits() const { return logits_; }      // [B*T, V]
  const Tensor& logprobs() const { return logprobs_; }  // [B*T], 0 where masked
  int64_t tokens_in_last_batch() const { return B_ * T_; }

 private:
  struct LayerW {
    Tensor attn_norm, wq, wk, wv, wo, mlp_norm, wg, wu, wd;
  };
  struct Acts {
    Tensor xn1, rstd1, q, k, v, o, lse, x2, xn2, rstd2, g, u, a;
  };

  LayerW layer(ParamSet& set, int64_t l);
  void allocate(int64_t B, int64_t T);
  void layer_forward(int64_t l, Acts& a);
  void layer_backward(int64_t l, Acts& a, Tensor& dres);
  void begin(const Tensor& tokens, const char* op);
  void ensure_backward_buffers();
  void backward_layers(int64_t top);
  const Tensor& out_weight() { return cfg_.tie_embeddings ? params_[0] : params_.get("lm_head.weight"); }

  LlamaConfig cfg_;
  DType dtype_;
  ParamSet params_, grads_;
  int64_t recompute_layers_ = 0;
  std::vector<double> inv_freq_;

  // Per-batch state.
  int64_t B_ = 0, T_ = 0;
  Tensor tokens_, targets_, weights_;
  Tensor resid_;  // [L+1, N, C]: input of each layer, and the final stream
  std::vector<Acts> acts_;  // one per stored layer, plus one scratch set shared by recomputed layers
  Acts& acts_for(int64_t l) {
    return l < recompute_layers_ ? acts_.back() : acts_[size_t(l - recompute_layers_)];
  }
  Tensor tmp_, xf_, rstdf_, logits_, logprobs_, lse_, cos_, sin_;
  // Backward scratch.
  Tensor dres_, dtmp_, dxn_, dq_, dk_, dv_, dg_, du_, da_, dlogits_;
  bool have_forward_ = false;  // a full forward (logits) is stored
  bool have_loss_ = false;     // ...with targets and weights, for backward()
  int64_t forward_layers_ = 0; // layers run by the last forward
  Tensor hidden_;
};

}  // namespace lethe
