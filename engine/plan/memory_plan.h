// Per-GPU memory and per-step communication of a training or unlearning run, computed
// from the model config, the process grid (tp x dp), the batch and the recipe. The
// activation count mirrors what engine/model/llama.cpp allocates, buffer by buffer, so the
// f32 plan can be checked against a measured CPU run. docs/plan.md gives the formulas.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/precision.h"
#include "engine/model/llama_config.h"

namespace lethe::plan {

// The engine's policy (engine/core/precision.h). bf16: bf16 weights and activations,
// fp32 weight grads, master weights and optimizer moments. f32: everything fp32, no master
// copy (AdamW updates the f32 weights in place).
using Precision = lethe::Precision;

// What the recipe asks of memory beyond one trained model.
struct RecipeNeeds {
  std::string method = "train";
  // Frozen original model: -1 none, otherwise the last layer it must run (n_layers - 1 and
  // `ref_logits` for KL / adversarial, the RMU layer for rmu_retain).
  int64_t ref_last_layer = -1;
  bool ref_logits = false;
  // RMU-only recipes run the trained model up to this layer and never compute logits.
  int64_t hidden_last_layer = -1;
  int64_t passes = 1;         // forward+backward passes per micro-batch (one per term)
  int64_t ref_forwards = 0;   // frozen-model forwards per micro-batch
  int64_t grad_accum = 1;     // micro-batches per optimizer step
  int optimizer_states = 2;   // AdamW: m and v; SGD with momentum: 1; plain SGD: 0
  std::vector<std::string> trainable;  // parameter-name fragments; empty = all
};

struct PlanInput {
  LlamaConfig model;
  int64_t tp = 1, dp = 1;
  int64_t micro_batch = 1, seq_len = 0;  // seq_len 0: the model's max_seq_len
  Precision precision = Precision::bf16;
  bool zero1 = true;          // shard fp32 master + moments over dp
  int64_t recompute = 0;      // layers recomputed in the backward (the first ones)
  RecipeNeeds recipe;
};

// Parameter counts held by one tensor-parallel rank.
struct ParamCounts {
  int64_t total = 0;      // every parameter of the rank's shard
  int64_t trainable = 0;  // those the optimizer updates
};

struct MemoryPlan {
  ParamCounts params;
  // Bytes per GPU.
  double weights = 0, grads = 0, master = 0, moments = 0;
  double opt_scratch = 0;   // ZeRO-1: fp32 gradient shard
  double act_resid = 0;     // layer inputs, kept even under recomputation
  double act_layers = 0;    // stored per-layer activations (+ one scratch set when recomputing)
  double act_head = 0;      // final norm, logits and loss buffers
  double act_backward = 0;  // backward scratch (allocated once, reused by every layer)
  double ref_weights = 0, ref_acts = 0;
  double activations() const { return act_resid + act_layers + act_head + act_backward; }
  double model_states() const { return weights + grads + master + moments + opt_scratch; }
  double total() const { return model_states() + activations() + ref_weights + ref_acts; }
};

// One collective, per optimizer step, as seen by one rank.
struct Collective {
  std::string group;  // "tp" or "dp"
  std::string op;     // all-reduce, reduce-scatter, all-gather
  std::string what;
  int64_t count = 0;        // how many per optimizer step
  double payload = 0;       // bytes of the buffer each call reduces or gathers
  double ring_factor = 0;   // bytes on the wire per payload byte per rank (ring algorithm)
  double bytes() const { return double(count) * payload * ring_factor; }
};

// Throws lethe::Error for a grid or batch the model cannot be split into.
void validate(const PlanInput& in);

ParamCounts param_counts(const PlanInput& in);
MemoryPlan memory_plan(const PlanInput& in);
std::vector<Collective> collectives(const PlanInput& in);

// Time per optimizer step on one GPU, from the FLOPs and the collectives above and a few
// stated hardware inputs. A model for deciding a layout, not a measurement: it says
// whether the communication of a layout hides behind its compute.
struct Links {
  double tflops = 400;        // achieved bf16 TFLOP/s per GPU (H100 SXM: 989 dense peak, ~40% achieved)
  double tp_gbs = 360;        // bus bandwidth of the tp collectives, GB/s (NVLink 4, NCCL busbw)
  double dp_gbs = 45;         // per GPU across nodes, GB/s (one 400 Gb/s NDR port per GPU, ~90%)
  double latency_us = 15;     // fixed cost per collective call
};
struct StepTime {
  double compute = 0;      // seconds of GEMM/attention FLOPs at Links::tflops
  double tp = 0;           // tp all-reduces: each layer waits for its own (not overlapped)
  double dp_reduce = 0;    // the gradient reduce-scatter (ZeRO-1) or all-reduce
  double dp_hidden = 0;    // of which overlapped with the last micro-batch's backward
  double dp_gather = 0;    // ZeRO-1's weight all-gather after the update
  double dp_gather_hidden = 0;  // of which overlapped with the next step's first forward
  double exposed() const { return tp + (dp_reduce - dp_hidden) + (dp_gather - dp_gather_hidden); }
  double step() const { return compute + exposed(); }
};
StepTime step_time(const PlanInput& in, const Links& links);

struct Gpu {
  std::string name;
  double bytes;  // total device memory as the driver reports it
};
const std::vector<Gpu>& known_gpus();

// Smallest number of recomputed layers whose plan fits in usable bytes, or -1.
int64_t fitting_recompute(PlanInput in, double usable);

}  // namespace lethe::plan
