// The engine's own GA+GD step on the GPU: LlamaModel on Device::cuda (every op through the
// device op boundary, kernels/device_ops.h), the chunked LM head and cross-entropy,
// Optimizer's clipping and AdamW on the fp32 master. The same step, shapes and token
// weights as the composed step in gpu_step.h, so the two rows of the benchmark compare the
// engine users run against the hand-composed kernel sequence in the same run.
#pragma once
#include <chrono>
#include <string>

#include "engine/core/device_memory.h"
#include "engine/core/error.h"
#include "engine/model/llama.h"
#include "engine/optim/optimizer.h"
#include "kernels/cuda/runtime.h"
#include "tools/bench/gpu_step.h"

namespace lethe::bench {

struct EngineResult {
  std::string error;  // empty when the step ran
  double ms = 0, tok_s = 0, loss = 0, grad_norm = 0;
  double peak_gib = 0;  // the caching allocator's peak reservation
};

inline EngineResult engine_step(const Model& m, int64_t L, int64_t B, int64_t T, int iters) {
  EngineResult r;
  try {
    LlamaConfig c;
    c.name = std::string(m.name) + "-engine";
    c.vocab_size = m.V;
    c.dim = m.C;
    c.n_layers = L;
    c.n_heads = m.H;
    c.n_kv_heads = m.KV;
    c.ffn_dim = m.F;
    c.max_seq_len = T;
    c.rope_theta = m.theta;
    c.init_std = 0.02;
    LlamaModel model(c, Precision::bf16, nullptr, Device::cuda);
    model.init_weights(1);
    OptimConfig oc;
    oc.grad_clip = 1.0;
    Optimizer opt(model.params(), oc, Precision::bf16);
    // Forget rows first (weight -1/n: ascent), retain rows after (+1/n: descent).
    Tensor tok = Tensor::empty({B, T}, DType::i32), tgt = Tensor::empty({B, T}, DType::i32);
    Tensor w = Tensor::empty({B, T}, DType::f32);
    const int64_t nf = B / 2 > 0 ? B / 2 : 1;
    for (int64_t i = 0; i < B * T; ++i) {
      tok.data<int32_t>()[i] = int32_t((i * 7919 + 13) % m.V);
      tgt.data<int32_t>()[i] = int32_t((i * 104729 + 7) % m.V);
      const bool forget = i / T < nf;
      w.data<float>()[i] = forget ? -1.f / float(nf * T) : 1.f / float(std::max<int64_t>(B - nf, 1) * T);
    }
    const int warmup = 2;
    double seconds = 0;
    for (int it = 0; it < warmup + iters; ++it) {
      cuda::synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      model.grads().zero();
      r.loss = model.forward(tok, tgt, &w);
      model.backward();
      r.grad_norm = opt.step(model.grads(), 1e-5);
      cuda::synchronize();
      if (it >= warmup) seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    r.ms = 1e3 * seconds / iters;
    r.tok_s = double(B * T) / (seconds / iters);
    r.peak_gib = double(device_allocator().stats().peak_reserved) / double(size_t(1) << 30);
  } catch (const Error& e) {
    r.error = e.what();
  }
  device_allocator().empty_cache();
  return r;
}

}  // namespace lethe::bench
