#include "engine/plan/memory_plan.h"

#include <algorithm>
#include <cmath>

#include "engine/core/error.h"
#include "engine/model/llama.h"

namespace lethe::plan {
namespace {

// Key/value heads are split over tp when tp divides them; otherwise every rank holds k/v
// whole and repeats the kv head of each of its query heads (engine/model/tp_layout.h).
bool kv_replicated(const LlamaConfig& c, int64_t tp) { return tp > 1 && c.n_kv_heads % tp != 0; }

bool is_kv(const std::string& name) {
  return name.find("self_attn.k_proj") != std::string::npos || name.find("self_attn.v_proj") != std::string::npos;
}

// Elements of parameter `s` held by one tensor-parallel rank: norms (and replicated k/v)
// whole, embedding and output projection split over the vocabulary, every other matrix
// split by rows or columns.
int64_t rank_numel(const ParamSpec& s, const LlamaConfig& c, int64_t tp) {
  const int64_t n = s.shape.size() == 1 ? s.shape[0] : s.shape[0] * s.shape[1];
  return s.shape.size() == 1 || (is_kv(s.name) && kv_replicated(c, tp)) ? n : n / tp;
}

int64_t seq_len(const PlanInput& in) { return in.seq_len > 0 ? in.seq_len : in.model.max_seq_len; }

// Layers the trained model runs: all, or up to the RMU layer.
int64_t run_layers(const PlanInput& in) {
  return in.recipe.hidden_last_layer >= 0 ? in.recipe.hidden_last_layer + 1 : in.model.n_layers;
}
bool has_logits(const PlanInput& in) { return in.recipe.hidden_last_layer < 0; }

// Rows of logits a model holds at once: every term runs the head in chunks
// (LlamaModel::loss_chunk_rows), so the whole [N, V] logits never exist.
double logits_rows(double N, double Vr) {
  return std::min(N, std::max(1.0, std::floor(double(LlamaModel::kLossChunkElements) / Vr)));
}

struct Sizes {
  double a, s;  // bytes per activation (and weight) element, per fp32 statistic (rstd, lse)
  // Bytes per weight-gradient element: fp32 in both modes. The bf16 policy accumulates
  // dW in fp32 (cuBLASLt writes dW += dY^T X into fp32, norms and embedding too), so the
  // buffer, and the gradients the collectives move, are 4 bytes a parameter.
  double g = 4;
};
Sizes sizes(const PlanInput& in) { return in.precision == Precision::bf16 ? Sizes{2, 4} : Sizes{4, 4}; }

// Widths of one tp rank's tensors (elements per token).
struct Dims {
  double N, C, Q, K, F, H, V;
  double Kproj;  // k/v projection output: K, or the whole kv_dim when replicated
};
Dims dims(const PlanInput& in) {
  const LlamaConfig& c = in.model;
  const double tp = double(in.tp);
  Dims d;
  d.N = double(in.micro_batch * seq_len(in));
  d.C = double(c.dim);
  d.Q = double(c.q_dim()) / tp;
  d.H = double(c.n_heads) / tp;
  d.F = double(c.ffn_dim) / tp;
  d.V = double(c.vocab_size) / tp;
  // Replicated: the attention sees one (repeated) kv head per local query head.
  d.K = kv_replicated(c, in.tp) ? d.Q : double(c.kv_dim()) / tp;
  d.Kproj = kv_replicated(c, in.tp) ? double(c.kv_dim()) : d.K;
  return d;
}

// One layer's stored activations (LlamaModel::Acts), for one tp rank.
double layer_set(const PlanInput& in) {
  const Sizes z = sizes(in);
  const Dims d = dims(in);
  const double full = 3 * d.N * d.C;                         // xn1, x2, xn2: inputs of split matmuls, replicated
  const double split = d.N * (2 * d.Q + 2 * d.K + 3 * d.F);  // q, o, k, v, gate, up, act
  const double stats = 2 * d.N + d.N * d.H;                  // rstd1, rstd2, lse [B, H/tp, T]
  return (full + split) * z.a + stats * z.s;
}

}  // namespace

void validate(const PlanInput& in) {
  const LlamaConfig& c = in.model;
  c.validate();
  LETHE_CHECK(in.tp >= 1, "tp must be >= 1, got ", in.tp);
  LETHE_CHECK(in.dp >= 1, "dp must be >= 1, got ", in.dp);
  LETHE_CHECK(c.n_heads % in.tp == 0, "tp=", in.tp, " does not divide n_heads (", c.n_heads, ") of model ", c.name,
              ": each tensor-parallel rank must hold whole query heads");
  LETHE_CHECK(c.ffn_dim % in.tp == 0, "tp=", in.tp, " does not divide ffn_dim (", c.ffn_dim, ") of model ", c.name);
  LETHE_CHECK(c.vocab_size % in.tp == 0, "tp=", in.tp, " does not divide vocab_size (", c.vocab_size, ") of model ",
              c.name, ": pad the vocabulary to a multiple of tp");
  LETHE_CHECK(in.micro_batch >= 1, "micro-batch must be >= 1, got ", in.micro_batch);
  const int64_t T = seq_len(in);
  LETHE_CHECK(T >= 1 && T <= c.max_seq_len, "seq_len ", T, " outside [1, ", c.max_seq_len, "] (the model's max_seq_len)");
  LETHE_CHECK(in.recompute >= 0 && in.recompute <= c.n_layers, "recompute must be in [0, ", c.n_layers, "], got ",
              in.recompute);
  const RecipeNeeds& r = in.recipe;
  LETHE_CHECK(r.ref_last_layer < c.n_layers && r.hidden_last_layer < c.n_layers, "recipe ", r.method,
              ": its RMU layer is outside the model's ", c.n_layers, " layers");
  LETHE_CHECK(r.passes >= 1 && r.grad_accum >= 1, "recipe ", r.method, ": passes and grad_accum must be >= 1");
  LETHE_CHECK(r.optimizer_states >= 0 && r.optimizer_states <= 2, "optimizer states must be 0, 1 or 2");
}

ParamCounts param_counts(const PlanInput& in) {
  ParamCounts n;
  for (const ParamSpec& s : llama_param_specs(in.model)) {
    const int64_t k = rank_numel(s, in.model, in.tp);
    n.total += k;
    bool train = in.recipe.trainable.empty();
    for (const auto& frag : in.recipe.trainable) train |= s.name.find(frag) != std::string::npos;
    if (train) n.trainable += k;
  }
  return n;
}

MemoryPlan memory_plan(const PlanInput& in) {
  validate(in);
  const LlamaConfig& c = in.model;
  const bool bf16 = in.precision == Precision::bf16;
  const Sizes z = sizes(in);
  const Dims d = dims(in);
  const double N = d.N, C = d.C, Q = d.Q, K = d.K, F = d.F, V = d.V;
  const bool sharded = in.zero1 && in.dp > 1;
  const double shard = sharded ? double(in.dp) : 1.0;

  MemoryPlan m;
  m.params = param_counts(in);
  const double P = double(m.params.total);
  m.weights = P * z.a;
  m.grads = P * z.g;
  // As engine/optim/sharded_optimizer.cpp: master and moments cover the whole flat buffer
  // (frozen parameters are skipped in the update, not in the allocation). In f32 without
  // sharding the master copy is the weights themselves. Under ZeRO-1 the update reads an
  // fp32 gradient shard; buckets are reduce-scattered from the gradients and gathered into
  // the weights in place, except a bucket whose length is not a multiple of dp, which goes
  // through a padded copy of itself (not counted: none at Llama shapes, where every tensor
  // is a multiple of 8 elements).
  m.master = bf16 || sharded ? P * 4 / shard : 0;
  m.moments = P * 4 * in.recipe.optimizer_states / shard;
  m.opt_scratch = sharded ? P * 4 / shard : 0;

  // Activations. A device allocates every layer's buffers for the batch
  // (LlamaModel::allocate), even where an RMU-only recipe runs the first layers; on the CPU
  // only what a step writes is resident (untouched pages, such as an RMU-only run's later
  // layers and logits, are never mapped).
  const int64_t L = bf16 ? c.n_layers : run_layers(in);
  const int64_t r = std::min(in.recompute, L);
  const int64_t sets = L - r + (r > 0 ? 1 : 0);
  m.act_resid = double(L + 1) * N * C * z.a;
  m.act_layers = double(sets) * layer_set(in);
  const double rope = 2 * double(seq_len(in)) * double(c.hd() / 2) * z.s;  // cos, sin tables: fp32 on the GPU too
  m.act_head = N * C * z.a + rope;  // tmp_ (attention / MLP output before the residual add)
  const bool rep_kv = kv_replicated(c, in.tp);
  if (rep_kv) m.act_head += N * d.Kproj * z.a;  // kv_full_: k or v before the heads are repeated
  // qkv_: the fused q/k/v projection's output in the forward, its dy in the backward.
  const double qkv = rep_kv ? 0 : N * (Q + 2 * K) * z.a;
  m.act_head += qkv;
  // Under bf16 with tp, each tp sum (row-parallel outputs, column-parallel input
  // gradients) is formed and all-reduced in an fp32 [N, C] buffer, then rounded once.
  if (bf16 && in.tp > 1) m.act_head += N * C * 4;
  const double R = logits_rows(N, V);
  if (has_logits(in)) {
    // xf_ [N, C], rstdf_, logits [R, V/tp], logprobs, lse, per-token loss weights (f64 on CPU).
    m.act_head += N * C * z.a + N * z.s + R * V * z.a + 2 * N * z.s + N * (bf16 ? 4 : 8);
  } else if (bf16) {
    m.act_head += N * C * z.a + 3 * N * z.s;  // xf_, rstdf_, logprobs_, lse_: allocated with the batch
  }
  // dres_, dxn_ [N, C]; dtmp_, dq_ [N, q/tp]; dk_, dv_; dg_, du_, da_ [N, F/tp]; d(logits) [R, V/tp].
  m.act_backward = (2 * N * C + 2 * N * Q + 2 * N * K + 3 * N * F + (has_logits(in) ? R * V : 0)) * z.a;
  // Replicated k/v: d(k or v) before collapsing the repeats, and the (fp32) weight gradient
  // that is summed over tp before it is added.
  if (rep_kv) m.act_backward += N * d.Kproj * z.a + d.Kproj * C * z.g;

  const RecipeNeeds& rc = in.recipe;
  if (rc.ref_last_layer >= 0) {
    // The frozen original as the engine holds it: the whole model when a term reads its
    // logits, else its first ref_last_layer + 1 layers (with the embedding, final norm and
    // head, as stored); forward-only and without gradients (LlamaModel::set_forward_only):
    // its forward keeps the residual stream and one layer's working set. On a device every
    // buffer of its batch is allocated; on the CPU only what its forward writes is resident
    // (the layers it runs, the head when it reads logits).
    LlamaConfig held = c;
    if (!rc.ref_logits) held.n_layers = rc.ref_last_layer + 1;
    double ref_params = 0;
    for (const ParamSpec& s : llama_param_specs(held)) ref_params += double(rank_numel(s, c, in.tp));
    m.ref_weights = ref_params * z.a;
    const double ran = bf16 ? double(held.n_layers) : double(rc.ref_last_layer + 1);  // layers its resid_ holds
    const bool head_bufs = bf16 || rc.ref_logits;  // xf_, rstdf_, logprobs_, lse_
    m.ref_acts = (ran + 1) * N * C * z.a + layer_set(in) + N * C * z.a + rope +
                 (head_bufs ? N * C * z.a + 3 * N * z.s : 0) + (rc.ref_logits ? R * V * z.a : 0);
    if (rep_kv) m.ref_acts += N * d.Kproj * z.a;
    m.ref_acts += qkv;
  }
  // RMU's terms build d(hidden) [N, C] in f32 where the model is (ops::hidden_mse), one
  // term at a time; the reference's hidden state is read in place.
  if (rc.hidden_last_layer >= 0) m.act_head += N * C * 4;
  return m;
}

std::vector<Collective> collectives(const PlanInput& in) {
  validate(in);
  const Sizes z = sizes(in);
  const double N = double(in.micro_batch * seq_len(in)), C = double(in.model.dim);
  const int64_t L = run_layers(in), r = std::min(in.recompute, L);
  const int64_t micro = in.recipe.grad_accum;
  std::vector<Collective> out;
  if (in.tp > 1) {
    const double ring = 2.0 * double(in.tp - 1) / double(in.tp);
    const int64_t passes = in.recipe.passes * micro;
    // Row-parallel o_proj and down_proj: one all-reduce each in the forward; their
    // column-parallel partners' input gradients: one each in the backward. Every tp sum
    // travels in fp32 (the policy's fp32 reductions: a bf16 sum rounds once, after it).
    out.push_back({"tp", "all-reduce", "o/down outputs, forward (2 per layer)", 2 * L * passes, N * C * 4, ring});
    out.push_back({"tp", "all-reduce", "q/k/v and gate/up input grads, backward (2 per layer)", 2 * L * passes,
                   N * C * 4, ring});
    if (r > 0)
      out.push_back({"tp", "all-reduce", "recomputed forward (2 per recomputed layer)", 2 * r * passes, N * C * 4,
                     ring});
    if (kv_replicated(in.model, in.tp))
      out.push_back({"tp", "all-reduce", "replicated k/v weight grads, backward (2 per layer)", 2 * L * passes,
                     double(in.model.kv_dim()) * C * z.g, ring});
    out.push_back({"tp", "all-reduce", "vocab-parallel embedding, forward", passes, N * C * 4, ring});
    if (has_logits(in)) {
      out.push_back({"tp", "all-reduce", "lm_head input grad, backward", passes, N * C * 4, ring});
      out.push_back({"tp", "all-reduce", "vocab-parallel cross-entropy (max, sum exp, target logit; fp32)",
                     3 * passes, N * 4, ring});
    }
    if (in.recipe.ref_forwards > 0) {
      const int64_t ref_l = in.recipe.ref_last_layer + 1, f = in.recipe.ref_forwards * micro;
      out.push_back({"tp", "all-reduce", "frozen reference forward (2 per layer + embedding)", (2 * ref_l + 1) * f,
                     N * C * 4, ring});
    }
  }
  if (in.dp > 1) {
    // The whole flat gradient buffer moves, frozen parameters included (their grads are zero).
    const double P = double(param_counts(in).total), n = double(in.dp);
    // Gradients move in fp32; the all-gather moves the updated weights (bf16: each owner
    // rounds its chunk first, so the gathered copy is the bf16 weights).
    if (in.zero1) {
      out.push_back({"dp", "reduce-scatter", "gradients (each rank keeps its 1/dp shard)", 1, P * z.g, (n - 1) / n});
      out.push_back({"dp", "all-gather", "updated weights from the shard owners", 1, P * z.a, (n - 1) / n});
    } else {
      out.push_back({"dp", "all-reduce", "gradients", 1, P * z.g, 2 * (n - 1) / n});
    }
  }
  return out;
}

StepTime step_time(const PlanInput& in, const Links& links) {
  LETHE_CHECK(links.tflops > 0 && links.tp_gbs > 0 && links.dp_gbs > 0 && links.latency_us >= 0,
              "plan: compute rate and bandwidths must be > 0, latency >= 0");
  validate(in);
  StepTime t;
  // Model FLOPs of this GPU's share: every pass of every micro-batch, a frozen-reference
  // forward a third of a training pass (forward only), split over tp.
  const double T = double(seq_len(in)), tokens = double(in.micro_batch) * T;
  const double per_pass = in.model.train_flops_per_token(seq_len(in)) * tokens / double(in.tp);
  const double passes = double(in.recipe.passes) + double(in.recipe.ref_forwards) / 3.0;
  const double micro_compute = per_pass * passes / (links.tflops * 1e12);
  t.compute = micro_compute * double(in.recipe.grad_accum);
  for (const Collective& k : collectives(in)) {
    const double s = k.bytes() / (1e9 * (k.group == "tp" ? links.tp_gbs : links.dp_gbs)) +
                     double(k.count) * links.latency_us * 1e-6;
    if (k.group == "tp") t.tp += s;
    else if (k.op == "all-gather") t.dp_gather += s;
    else t.dp_reduce += s;
  }
  // Buckets start as the last micro-batch's backward finishes them (two thirds of its
  // compute): at most that much of the reduction hides.
  t.dp_hidden = std::min(t.dp_reduce, micro_compute * 2.0 / 3.0);
  // The weight all-gathers run on while the next step's first forward reads the weights
  // in order (a third of a micro-batch's compute): at most that much of them hides.
  t.dp_gather_hidden = std::min(t.dp_gather, micro_compute / 3.0);
  return t;
}

const std::vector<Gpu>& known_gpus() {
  // Totals as nvidia-smi reports them (MiB), not the marketing figure.
  static const std::vector<Gpu> g{{"80 GB (H100 / A100 80GB)", 81559.0 * (1 << 20)},
                                  {"141 GB (H200)", 143771.0 * (1 << 20)}};
  return g;
}

int64_t fitting_recompute(PlanInput in, double usable) {
  for (int64_t r = 0; r <= in.model.n_layers; ++r) {
    in.recompute = r;
    if (memory_plan(in).total() <= usable) return r;
  }
  return -1;
}

}  // namespace lethe::plan
