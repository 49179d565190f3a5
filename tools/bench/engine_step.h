// The engine's own GA+GD step on the GPU, the step `lethe train` and `lethe unlearn` run:
// LlamaModel on Device::cuda (every op through the device op boundary,
// kernels/device_ops.h), the chunked LM head and cross-entropy, Optimizer's clipping and
// AdamW on the fp32 master. A forget and a retain stream share the batch with signed
// per-token weights (-1/n ascends the forget NLL, +1/n descends the retain NLL), as
// tools/bench/torch_gpu_step.py runs it with transformers.
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/device_memory.h"
#include "engine/core/error.h"
#include "engine/model/llama.h"
#include "engine/optim/optimizer.h"
#include "engine/plan/device_fit.h"
#include "engine/plan/memory_plan.h"
#include "kernels/timed_device_ops.h"

namespace lethe::bench {

struct Model {
  const char* name;  // the preset torch_gpu_step.py reads (configs/models/<name>.yaml)
  int64_t C, H, KV, F, V;
  double theta;
};
// Llama-2-7B and Yi-6B widths (configs/models/llama2-7b.yaml, yi-6b.yaml).
inline const Model kModels[] = {{"llama2-7b", 4096, 32, 32, 11008, 32000, 1e4},
                                {"yi-6b", 4096, 32, 4, 11008, 64000, 5e6}};

inline LlamaConfig engine_config(const Model& m, int64_t layers, int64_t T) {
  LlamaConfig c;
  c.name = m.name;
  c.vocab_size = m.V;
  c.dim = m.C;
  c.n_layers = layers;
  c.n_heads = m.H;
  c.n_kv_heads = m.KV;
  c.ffn_dim = m.F;
  c.max_seq_len = T;
  c.rope_theta = m.theta;
  c.init_std = 0.02;
  return c;
}

// The most layers, at most max_layers, whose step the memory plan (engine/plan) fits in
// free_bytes less the headroom `lethe plan` keeps for workspaces and fragmentation; 0 if
// not even one. An estimate: the step itself is the test (engine_step reports running out).
inline int64_t planned_layers(const Model& m, int64_t B, int64_t T, int64_t max_layers, double free_bytes) {
  for (int64_t L = max_layers; L >= 1; --L) {
    plan::PlanInput in;
    in.model = engine_config(m, L, T);
    in.micro_batch = B;
    in.seq_len = T;
    in.precision = Precision::bf16;
    if (plan::memory_plan(in).total() <= free_bytes * (1 - plan::kDeviceHeadroom)) return L;
  }
  return 0;
}

struct EngineResult {
  std::string error;  // empty when the step ran
  bool out_of_memory = false;
  double ms = 0, tok_s = 0, loss = 0, grad_norm = 0;
  // This case's peaks (the allocator's peaks restart with it): the caching allocator's
  // reservation, and the bytes the tensors asked for next to what `lethe plan` counts.
  double peak_gib = 0, tensor_peak_gib = 0, plan_gib = 0;
  // One more step with every op timed (kernels/timed_device_ops.h): synchronised around
  // each op, so slower than the steps above; its shares, not its speed, are the result.
  OpFamilyTimes ops;
  double profiled_seconds = 0;
};

// sync waits for the device (cuda::synchronize): every step is timed from the host between
// two waits, and the profiled step waits around every op.
inline EngineResult engine_step(const Model& m, int64_t L, int64_t B, int64_t T, int iters,
                                const std::function<void()>& sync) {
  EngineResult r;
  {
    plan::PlanInput in;
    in.model = engine_config(m, L, T);
    in.micro_batch = B;
    in.seq_len = T;
    in.precision = Precision::bf16;
    r.plan_gib = plan::memory_plan(in).total() / double(size_t(1) << 30);
  }
  device_allocator().reset_peaks();
  try {
    LlamaModel model(engine_config(m, L, T), Precision::bf16, nullptr, Device::cuda);
    model.init_weights(1);
    OptimConfig oc;
    oc.grad_clip = 1.0;
    oc.weight_decay = 0.1;  // as the transformers peer's AdamW
    Optimizer opt(model.params(), oc, Precision::bf16);
    // Forget rows first (weight -1/n: ascent), retain rows after (+1/n: descent).
    Tensor tok = Tensor::empty({B, T}, DType::i32), tgt = Tensor::empty({B, T}, DType::i32);
    Tensor w = Tensor::empty({B, T}, DType::f32);
    const int64_t nf = std::max<int64_t>(B / 2, 1);
    for (int64_t i = 0; i < B * T; ++i) {
      tok.data<int32_t>()[i] = int32_t((i * 7919 + 13) % m.V);
      tgt.data<int32_t>()[i] = int32_t((i * 104729 + 7) % m.V);
      const bool forget = i / T < nf;
      w.data<float>()[i] = forget ? -1.f / float(nf * T) : 1.f / float(std::max<int64_t>(B - nf, 1) * T);
    }
    using Clock = std::chrono::steady_clock;
    auto step = [&]() -> double {
      sync();
      const Clock::time_point t0 = Clock::now();
      model.grads().zero();
      r.loss = model.forward(tok, tgt, &w);
      model.backward();
      r.grad_norm = opt.step(model.grads(), 1e-5);
      sync();
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    // The median of the timed steps, as the transformers peer reports its own.
    const int warmup = 2;
    std::vector<double> seconds;
    for (int it = 0; it < warmup + iters; ++it) {
      const double s = step();
      if (it >= warmup) seconds.push_back(s);
    }
    std::nth_element(seconds.begin(), seconds.begin() + iters / 2, seconds.end());
    const double median = seconds[size_t(iters / 2)];
    r.ms = 1e3 * median;
    r.tok_s = double(B * T) / median;
    {
      ScopedOpTiming timing(sync);
      r.profiled_seconds = step();
      r.ops = timing.times();
    }
    const CachingAllocator::Stats st = device_allocator().stats();
    r.peak_gib = double(st.peak_reserved) / double(size_t(1) << 30);
    r.tensor_peak_gib = double(st.peak_requested) / double(size_t(1) << 30);
  } catch (const Error& e) {
    r.error = e.what();
    r.out_of_memory = r.error.find("out of memory") != std::string::npos;
  }
  device_allocator().empty_cache();
  return r;
}

}  // namespace lethe::bench
