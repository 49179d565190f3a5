// lethe_bench_cpu: forward+backward throughput of LlamaModel in f32 on the CPU.
// Speed is measured here, never asserted in tests: numbers depend on the machine.
//
//   lethe_bench_cpu --case all --threads 2 --json
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/io/model_config_yaml.h"
#include "engine/model/llama.h"
#include "kernels/cpu/blas_kernel.h"
#include "kernels/cross_entropy.h"

#ifndef LETHE_SOURCE_DIR
#define LETHE_SOURCE_DIR "."
#endif

namespace {

struct Options {
  std::string which = "all";
  std::string configs = LETHE_SOURCE_DIR "/configs/models";
  int64_t batch = 0, seq = 0;  // 0: the case's default
  int warmup = 1, iters = 3, threads = 0;
  bool json = false, blas = false;
};

struct Case {
  const char* name;
  const char* preset;
  bool one_layer;  // a single decoder block at the preset's full width and vocabulary
  int64_t batch, seq;
};

constexpr Case kCases[] = {
    {"tiny", "tiny.yaml", false, 8, 256},
    {"llama2-7b-layer", "llama2-7b.yaml", true, 1, 256},
    {"yi-6b-layer", "yi-6b.yaml", true, 1, 256},
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "error: %s\nusage: lethe_bench_cpu [--case tiny|llama2-7b-layer|yi-6b-layer|all] [--batch B] "
               "[--seq T]\n       [--warmup N] [--iters N] [--threads N] [--configs DIR] [--json] [--blas]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage((a + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--case") o.which = value();
    else if (a == "--configs") o.configs = value();
    else if (a == "--batch") o.batch = std::stoll(value());
    else if (a == "--seq") o.seq = std::stoll(value());
    else if (a == "--warmup") o.warmup = std::stoi(value());
    else if (a == "--iters") o.iters = std::stoi(value());
    else if (a == "--threads") o.threads = std::stoi(value());
    else if (a == "--json") o.json = true;
    else if (a == "--blas") o.blas = true;  // print the GEMM kernel in use and exit
    else if (a == "-h" || a == "--help") usage("help requested");
    else usage(("unknown flag " + a).c_str());
  }
  if (o.iters < 1 || o.warmup < 0) usage("--iters must be >= 1 and --warmup >= 0");
  return o;
}

void run_case(const Case& c, const Options& o) {
  using namespace lethe;
  LlamaConfig cfg = load_llama_config(o.configs + "/" + c.preset);
  if (c.one_layer) cfg.n_layers = 1;
  const int64_t B = o.batch ? o.batch : c.batch, T = o.seq ? o.seq : c.seq;
  // The bench may run past a preset's nominal context; the RoPE tables are built per T.
  cfg.max_seq_len = std::max(cfg.max_seq_len, T);

  LlamaModel model(cfg, DType::f32);
  model.init_weights(1234);

  // Fixed LCG so both runtimes see comparable data without sharing a file.
  std::vector<int32_t> tok(size_t(B * T)), tgt(size_t(B * T));
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (auto& t : tok) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t = int32_t((s >> 33) % uint64_t(cfg.vocab_size));
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      tgt[size_t(b * T + t)] = t + 1 < T ? tok[size_t(b * T + t + 1)] : ops::kIgnoreIndex;
  const Tensor tokens = Tensor::from<int32_t>({B, T}, tok), targets = Tensor::from<int32_t>({B, T}, tgt);

  std::vector<double> ms;
  double loss = 0;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    model.grads().zero();
    loss = model.forward(tokens, targets);
    model.backward();
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= o.warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  const double tok_s = double(B * T) / (med / 1e3);
  const double gflops = tok_s * cfg.train_flops_per_token(T) / 1e9;

  if (o.json)
    std::printf(
        "{\"case\": \"%s\", \"batch\": %lld, \"seq\": %lld, \"tokens_per_s\": %.2f, \"ms_per_step\": %.3f, "
        "\"model_gflops_per_s\": %.3f}\n",
        c.name, (long long)B, (long long)T, tok_s, med, gflops);
  else
    std::printf("%-16s %lldx%lld  %10.1f tok/s  %9.2f ms/step  %8.2f GFLOP/s  loss %.4f\n", c.name, (long long)B,
                (long long)T, tok_s, med, gflops, loss);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    lethe::select_blas_kernel(argv);  // the same GEMM kernel `lethe` would run
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  const Options o = parse(argc, argv);
  if (o.blas) {
    std::printf("%s\n", lethe::blas_kernel_line().c_str());
    return 0;
  }
  if (o.threads > 0) {
    // Both pools matter: OpenMP runs the elementwise kernels and attention, OpenBLAS its own
    // pthreads for GEMM. Its environment variable is read at load time, so set it directly.
    omp_set_num_threads(o.threads);
    openblas_set_num_threads(o.threads);
  }
  bool any = false;
  try {
    for (const Case& c : kCases)
      if (o.which == "all" || o.which == c.name) {
        run_case(c, o);
        any = true;
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  if (!any) usage(("unknown case " + o.which).c_str());
  return 0;
}
