// GPU throughput of the engine's own unlearning step (tools/bench/engine_step.h: GA+GD, a
// forget and a retain stream in one batch, LlamaModel + Optimizer on CUDA, the step users
// run) on Llama layers of 7B width. Reports tokens/s, model TFLOP/s and MFU against the
// card's dense bf16 peak, and where the step's time goes by op family, from one extra
// step synchronised around every op. tools/bench/torch_gpu_step.py runs the same step with
// transformers for the ratio; tools/gpu_check.sh runs both; docs/perf.md has the columns.
//
//   lethe_bench_gpu [--quick] [--max-layers N] [--batch B] [--json out.json]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/runtime.h"
#include "kernels/device.h"
#include "tools/bench/engine_step.h"
#include "tools/bench/gpu_bench.h"

namespace lethe::bench {
namespace {

constexpr const char* kTool = "lethe_bench_gpu";

// Prints the share table and returns it for the JSON. A single-GPU step has no
// communication; the row says so rather than leaving the family out.
nlohmann::json report_shares(const std::string& name, const EngineResult& e) {
  const double step_ms = 1e3 * e.profiled_seconds;
  std::printf("%-20s where the time goes: one extra step, synchronised before and after every op (%.2f ms); the "
              "shares are of that step, tokens/s above is from steps that wait for the device only at their ends\n",
              name.c_str(), step_ms);
  std::printf("  %-34s %7s %10s %7s\n", "op family", "calls", "ms", "share");
  nlohmann::json families = nlohmann::json::array();
  for (const StepShare& r : step_shares(e.ops, e.profiled_seconds)) {
    const bool other = r.what == "other";
    const std::string label = other ? "other (copies, casts, host work)" : r.what;
    std::printf("  %-34s %7lld %10.2f %6.1f%%\n", label.c_str(), (long long)r.calls, 1e3 * r.seconds, 100 * r.share);
    families.push_back({{"family", r.what}, {"calls", r.calls}, {"ms", 1e3 * r.seconds}, {"share", r.share}});
  }
  std::printf("  %-34s %7d %10.2f %6.1f%%  (one GPU: none)\n", "communication", 0, 0.0, 0.0);
  families.push_back({{"family", "communication"}, {"calls", 0}, {"ms", 0.0}, {"share", 0.0}, {"note", "one GPU"}});
  return {{"step_ms", step_ms},
          {"note", "one extra step, synchronised before and after every op; shares are of that step"},
          {"families", families}};
}

int run(int argc, char** argv) {
  bool quick = false;
  int64_t max_layers = 8, batch = 2;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--max-layers" && i + 1 < argc) max_layers = std::atoll(argv[++i]);
    else if (a == "--batch" && i + 1 < argc) batch = std::atoll(argv[++i]);
    else if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--max-layers N] [--batch B] [--json out.json]\n", kTool);
      return 2;
    }
  }
  if (max_layers < 1 || batch < 1) {
    std::fprintf(stderr, "%s: --max-layers and --batch must be at least 1\n", kTool);
    return 2;
  }
  if (!gpu_usable(kTool)) return 2;
  const GpuInfo gpu = describe_gpu();
  // The attention kernels as `lethe` picks them, so the step can be timed with any of them.
  const char* fwd = std::getenv("LETHE_ATTENTION_FORWARD");
  const char* bwd = std::getenv("LETHE_ATTENTION_BACKWARD");
  select_cuda_attention_kernels(fwd && *fwd ? fwd : cuda::attention_kernel_name(cuda::attention_forward_kernel()),
                                "LETHE_ATTENTION_FORWARD",
                                bwd && *bwd ? bwd : cuda::attention_kernel_name(cuda::attention_backward_kernel()),
                                "LETHE_ATTENTION_BACKWARD");
  std::printf("attention in the step: %s (LETHE_ATTENTION_FORWARD / LETHE_ATTENTION_BACKWARD choose)\n",
              cuda_attention_kernels().c_str());
  nlohmann::json out = gpu_json(gpu);
  out["attention_kernels"] = cuda_attention_kernels();
  out["results"] = nlohmann::json::array();
  bool bad = false;
  const int iters = quick ? 3 : 5;
  const std::function<void()> sync = [] { cuda::synchronize(); };
  const std::vector<int64_t> seqs = quick ? std::vector<int64_t>{2048} : std::vector<int64_t>{2048, 4096};
  for (const Model& model : kModels) {
    if (quick && &model != &kModels[0]) break;
    for (int64_t T : seqs) {
      const std::string name = std::string(model.name) + "/T" + std::to_string(T);
      size_t free_b = 0, total_b = 0;
      cuda::memory_info(free_b, total_b);
      int64_t L = planned_layers(model, batch, T, max_layers, double(free_b));
      if (L < 1) {
        char why[96];
        std::snprintf(why, sizeof why, "not one layer fits by the memory plan (%.1f GiB free)",
                      double(free_b) / (1 << 30));
        std::printf("%-20s %s\n", name.c_str(), why);
        out["results"].push_back({{"case", name}, {"layers", 0}, {"batch", batch}, {"seq", T}, {"error", why}});
        if (!write_json(json_path, out, kTool)) return 1;
        continue;
      }
      // The plan is an estimate; the allocator has the last word.
      EngineResult e = engine_step(model, L, batch, T, iters, sync);
      for (int retry = 0; e.out_of_memory && L > 1 && retry < 3; ++retry) {
        std::printf("%-20s %lld layers ran out of memory; trying %lld\n", name.c_str(), (long long)L,
                    (long long)(L - 1));
        e = engine_step(model, --L, batch, T, iters, sync);
      }
      nlohmann::json r = {{"case", name}, {"layers", L}, {"batch", batch}, {"seq", T}};
      if (!e.error.empty()) {
        std::fprintf(stderr, "%s: %s: %s\n", kTool, name.c_str(), e.error.c_str());
        r["error"] = e.error;
        // Not fitting is a finding about memory, not a failure of the step.
        if (!e.out_of_memory) bad = true;
      } else {
        const double flops_per_token = engine_config(model, L, T).train_flops_per_token(T);
        const double tflops = e.tok_s * flops_per_token / 1e12;
        const double mfu = gpu.peak_flops > 0 ? tflops * 1e12 / gpu.peak_flops : 0;
        std::printf("%-20s layers %2lld  %lldx%lld  %8.2f ms/step  %9.0f tok/s  %6.1f TFLOP/s  MFU %5.1f%%  "
                    "loss %.4f  |g| %.3g  peak %.1f GiB (tensors %.2f GiB, plan %.2f GiB)\n",
                    name.c_str(), (long long)L, (long long)batch, (long long)T, e.ms, e.tok_s, tflops, 100 * mfu,
                    e.loss, e.grad_norm, e.peak_gib, e.tensor_peak_gib, e.plan_gib);
        r.update({{"ms_per_step", e.ms},
                  {"tokens_per_s", e.tok_s},
                  {"model_tflops", tflops},
                  {"mfu", mfu},
                  {"loss", e.loss},
                  {"grad_norm", e.grad_norm},
                  {"peak_gib", e.peak_gib},
                  {"tensor_peak_gib", e.tensor_peak_gib},
                  {"plan_gib", e.plan_gib},
                  {"op_shares", report_shares(name, e)}});
        if (!std::isfinite(e.loss) || !std::isfinite(e.grad_norm)) {
          std::fprintf(stderr, "%s: %s: non-finite loss or gradient norm\n", kTool, name.c_str());
          bad = true;
        }
      }
      std::fflush(stdout);
      out["results"].push_back(r);
      if (!write_json(json_path, out, kTool)) return 1;
    }
  }
  return bad ? 1 : 0;
}

}  // namespace
}  // namespace lethe::bench

int main(int argc, char** argv) {
  return lethe::bench::bench_main(lethe::bench::kTool, lethe::bench::run, argc, argv);
}
