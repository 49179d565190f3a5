// GPU throughput of one unlearning step (GA+GD: gradient ascent on a forget sequence and
// descent on a retain sequence in the same batch, signed per-token weights) on Llama
// layers of 7B width: forward, chunked vocabulary cross-entropy with the backward fused,
// backward, global grad-norm clipping and AdamW on fp32 master weights. Reports tokens/s,
// model TFLOP/s and MFU against the card's dense bf16 peak, and causal attention
// forward+backward TFLOP/s alone. tools/bench/torch_gpu_step.py runs the same step with
// transformers for the ratio; tools/gpu_check.sh runs both. Each case then runs the
// engine's own step (tools/bench/engine_step.h: LlamaModel and Optimizer on CUDA, the step
// users run) at the same shapes, and reports it beside the composed step.
//
//   lethe_bench_gpu [--quick] [--max-layers N] [--json out.json]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/core/error.h"  // lethe::Error
#include "engine/core/peak_flops.h"
#include "tools/bench/engine_step.h"
#include "tools/bench/gpu_step.h"  // Step, kModels

namespace lethe::bench {
namespace {

struct Result {
  std::string model_case;
  int64_t layers, batch, seq;
  double ms, tok_s, tflops, mfu, attn_tflops, loss, grad_norm, fwd_wmma_tflops, fwd_mma_tflops;
  double engine_tok_s = 0, engine_mfu = 0, engine_peak_gib = 0;  // the engine's own step (0: did not run)
  std::string engine_error;
};

int run(int argc, char** argv) {
  bool quick = false;
  int64_t max_layers = 8, batch = 2;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--max-layers" && i + 1 < argc) max_layers = std::atoll(argv[++i]);
    else if (a == "--batch" && i + 1 < argc) batch = std::atoll(argv[++i]);
    else if (a == "--json" && i + 1 < argc) json = argv[++i];
    else {
      std::fprintf(stderr, "usage: lethe_bench_gpu [--quick] [--max-layers N] [--batch B] [--json out.json]\n");
      return 2;
    }
  }
  if (!cuda::available()) {
    std::fprintf(stderr, "lethe_bench_gpu: %s\n", cuda::unavailable_reason().c_str());
    return 2;
  }
  // The MFU denominator, by card name and form factor (SXM, NVL and PCIe differ).
  const std::string device = cuda::device_name();
  const PeakFlops pk = gpu_bf16_peak_flops(device);
  const double peak = pk.flops;
  std::string peak_source = pk.source;
  for (char& c : peak_source)
    if (c == '"' || c == '\\') c = '\'';
  if (peak > 0)
    std::printf("device %s; peak assumed %.0f TFLOP/s dense bf16 (%s)\n", device.c_str(), peak / 1e12,
                peak_source.c_str());
  else
    std::printf("device %s; peak unknown, MFU not reported (%s)\n", device.c_str(), peak_source.c_str());
  std::vector<Result> results;
  // Rewritten after every case, so a later failure keeps the earlier results.
  auto write_json = [&]() -> bool {
    if (json.empty()) return true;
    FILE* f = std::fopen(json.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "lethe_bench_gpu: cannot write %s\n", json.c_str());
      return false;
    }
    std::fprintf(f, "{\"device\": \"%s\", \"peak_tflops\": %.1f, \"peak_source\": \"%s\", \"results\": [",
                 device.c_str(), peak / 1e12, peak_source.c_str());
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::fprintf(f,
                   "%s\n  {\"case\": \"%s\", \"layers\": %lld, \"batch\": %lld, \"seq\": %lld, \"ms_per_step\": %.3f, "
                   "\"tokens_per_s\": %.1f, \"model_tflops\": %.2f, \"mfu\": %.4f, \"attention_tflops\": %.2f, "
                   "\"loss\": %.6f, \"grad_norm\": %.6g, \"attention_fwd_tflops_wmma\": %.2f, "
                   "\"attention_fwd_tflops_mma\": %.2f, \"engine_tokens_per_s\": %.1f, \"engine_mfu\": %.4f, "
                   "\"engine_peak_gib\": %.2f, \"engine_error\": \"%s\"}",
                   i ? "," : "", r.model_case.c_str(), (long long)r.layers, (long long)r.batch, (long long)r.seq, r.ms,
                   r.tok_s, r.tflops, r.mfu, r.attn_tflops, r.loss, r.grad_norm, r.fwd_wmma_tflops, r.fwd_mma_tflops,
                   r.engine_tok_s, r.engine_mfu, r.engine_peak_gib, r.engine_error.c_str());
    }
    std::fprintf(f, "\n]}\n");
    std::fclose(f);
    return true;
  };
  bool bad = false;
  const std::vector<int64_t> seqs = quick ? std::vector<int64_t>{2048} : std::vector<int64_t>{2048, 4096};
  for (const Model& model : kModels) {
    if (quick && &model != &kModels[0]) break;
    for (int64_t T : seqs) {
      Step probe(model, 1, batch, T);
      size_t free_b = 0, total_b = 0;
      cuda::memory_info(free_b, total_b);
      const size_t per_layer = size_t(probe.layer_params()) * 18 + probe.activation_bytes_per_layer();
      const double usable = 0.92 * double(free_b) - double(probe.fixed_bytes());
      const int64_t fit = usable > 0 ? int64_t(usable / double(per_layer)) : 0;
      const int64_t L = std::min(fit, max_layers);
      const std::string name = std::string(model.name) + "/T" + std::to_string(T);
      if (L < 1) {
        std::printf("%-20s does not fit (%.1f GiB free)\n", name.c_str(), double(free_b) / (1 << 30));
        continue;
      }
      {  // the composed step's arena is returned before the engine's step allocates
      Step st(model, L, batch, T);
      cuda::Arena arena(st.fixed_bytes() + size_t(L) * per_layer);
      st.build(arena);
      const int warmup = 2, iters = quick ? 3 : 5;
      cuda::Timer timer;
      double first_loss = 0;
      float ms = 0;
      for (int it = 0; it < warmup + iters; ++it) {
        if (it == warmup) timer.start();
        st.forward_backward();
        st.optimizer_step(it + 1);
        if (it == 0) {
          cuda::copy_to_host(&first_loss, st.loss, sizeof(double));
          cuda::check_launch("step");
        }
      }
      ms = timer.stop() / float(iters);
      float gnorm = 0;
      double last_loss = 0;
      cuda::copy_to_host(&gnorm, st.norm, 4);
      cuda::copy_to_host(&last_loss, st.loss, sizeof(double));
      // Attention alone (layer 0's tensors), forward + backward.
      const int attn_iters = 5;
      cuda::Timer at;
      at.start();
      for (int i = 0; i < attn_iters; ++i) {
        Saved& s = st.saved[0];
        const float sc = 1.f / std::sqrt(float(st.D));
        cuda::attention_forward(s.q, s.k, s.v, sc, s.o, s.lse, st.B, T, model.H, model.KV, st.D);
        cuda::attention_backward(st.dout, s.q, s.k, s.v, s.o, s.lse, sc, st.dq, st.dk, st.dv, st.attn_ws, st.B, T,
                                 model.H, model.KV, st.D);
      }
      const float attn_ms = at.stop() / attn_iters;

      cuda::check_launch("bench");
      Result r{name, L, batch, T, ms, 0, 0, 0, 0, last_loss, gnorm, 0, 0, 0, 0, 0, {}};
      r.tok_s = double(st.N) / (ms / 1e3);
      r.tflops = r.tok_s * st.flops_per_token() / 1e12;
      r.mfu = peak > 0 ? r.tflops * 1e12 / peak : 0;
      r.attn_tflops = st.attention_flops() / (attn_ms / 1e3) / 1e12;
      std::printf("%-20s layers %2lld  %lldx%lld  %8.2f ms/step  %9.0f tok/s  %6.1f TFLOP/s  MFU %5.1f%%  "
                  "attention %6.1f TFLOP/s  loss %.4f (first %.4f)  |g| %.3g  arena peak %.1f GiB\n",
                  name.c_str(), (long long)L, (long long)batch, (long long)T, ms, r.tok_s, r.tflops, 100 * r.mfu,
                  r.attn_tflops, last_loss, first_loss, gnorm, double(arena.peak()) / (1 << 30));
      if (!std::isfinite(last_loss) || !std::isfinite(first_loss) || !std::isfinite(gnorm)) {
        std::fprintf(stderr, "lethe_bench_gpu: %s: non-finite loss or gradient norm\n", name.c_str());
        bad = true;
      }
      results.push_back(r);
      if (!write_json()) return 1;
      // Forward alone with each forward kernel, last: the mma kernel has not yet passed
      // its tests on hardware, and a fault would end the run (the results above are kept).
      try {
        float fwd_ms[2] = {0, 0};
        const cuda::AttentionForwardKernel kinds[2] = {cuda::AttentionForwardKernel::wmma,
                                                       cuda::AttentionForwardKernel::mma};
        for (int v = 0; v < 2; ++v) {
          cuda::set_attention_forward_kernel(kinds[v]);
          Saved& s = st.saved[0];
          const float sc = 1.f / std::sqrt(float(st.D));
          cuda::attention_forward(s.q, s.k, s.v, sc, s.o, s.lse, st.B, T, model.H, model.KV, st.D);  // warm-up
          at.start();
          for (int i = 0; i < attn_iters; ++i)
            cuda::attention_forward(s.q, s.k, s.v, sc, s.o, s.lse, st.B, T, model.H, model.KV, st.D);
          fwd_ms[v] = at.stop() / attn_iters;
        }
        cuda::set_attention_forward_kernel(cuda::AttentionForwardKernel::wmma);
        const double fwd_flops = st.attention_flops() / 3.5;
        results.back().fwd_wmma_tflops = fwd_flops / (fwd_ms[0] / 1e3) / 1e12;
        results.back().fwd_mma_tflops = fwd_flops / (fwd_ms[1] / 1e3) / 1e12;
        std::printf("%-20s attention forward alone: wmma %.1f TFLOP/s, mma %.1f TFLOP/s\n", name.c_str(),
                    results.back().fwd_wmma_tflops, results.back().fwd_mma_tflops);
        if (!write_json()) return 1;
      } catch (const Error& e) {
        std::fprintf(stderr, "lethe_bench_gpu: %s: attention forward variants: %s\n", name.c_str(), e.what());
        return 1;
      }
      cuda::gemm_destroy(st.gemm);
      cuda::synchronize();
      }
      const EngineResult e = engine_step(model, L, batch, T, quick ? 3 : 5);
      Result& last = results.back();
      if (e.error.empty()) {
        last.engine_tok_s = e.tok_s;
        last.engine_mfu = peak > 0 ? e.tok_s * (last.tflops * 1e12 / last.tok_s) / peak : 0;
        last.engine_peak_gib = e.peak_gib;
        std::printf("%-20s engine step (LlamaModel + Optimizer on CUDA): %8.2f ms/step  %9.0f tok/s  MFU %5.1f%%  "
                    "%.2fx the composed step  loss %.4f  |g| %.3g  peak %.1f GiB\n",
                    name.c_str(), e.ms, e.tok_s, 100 * last.engine_mfu, e.tok_s / last.tok_s, e.loss, e.grad_norm,
                    e.peak_gib);
        if (!std::isfinite(e.loss) || !std::isfinite(e.grad_norm)) bad = true;
      } else {
        std::string msg = e.error;
        for (char& ch : msg)
          if (ch == '"' || ch == '\\' || ch == '\n') ch = '\'';
        last.engine_error = msg;
        std::fprintf(stderr, "lethe_bench_gpu: %s: engine step: %s\n", name.c_str(), e.error.c_str());
        // Not fitting beside what the composed step fits is a finding, not a failure.
        if (e.error.find("out of memory") == std::string::npos) bad = true;
      }
      if (!write_json()) return 1;
    }
  }
  return bad ? 1 : 0;
}

}  // namespace
}  // namespace lethe::bench

int main(int argc, char** argv) {
  try {
    return lethe::bench::run(argc, argv);
  } catch (const lethe::Error& e) {
    std::fprintf(stderr, "lethe_bench_gpu: %s\n", e.what());
    return 1;
  }
}
