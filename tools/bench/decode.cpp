// lethe_bench_decode: greedy decoding with the key/value cache against a forward over the
// whole context per new token (what the engine did before the cache), in the same run, on
// the same model and tokens. Speed is measured here, never asserted in tests.
//
//   lethe_bench_decode [--preset smollm2-135m] [--batch 2] [--prefix 64] [--tokens 32] [--threads 2]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/io/model_config_yaml.h"
#include "engine/model/llama.h"
#include "engine/parallel/vocab_parallel.h"
#include "kernels/cpu/blas_kernel.h"

#ifndef LETHE_SOURCE_DIR
#define LETHE_SOURCE_DIR "."
#endif

namespace {

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "error: %s\nusage: lethe_bench_decode [--preset NAME] [--batch B] [--prefix P] [--tokens N] "
               "[--threads N]\n",
               msg);
  std::exit(2);
}

// Argmax of each row of logits [B, V] into next [B].
void argmax_rows(const lethe::Tensor& logits, lethe::Tensor& next) {
  const int64_t B = logits.dim(0), V = logits.dim(1);
  for (int64_t b = 0; b < B; ++b) {
    const float* r = logits.data<float>() + b * V;
    next.data<int32_t>()[b] = int32_t(std::max_element(r, r + V) - r);
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lethe;
  std::string preset = "smollm2-135m";
  int64_t B = 2, P = 64, N = 32;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage((a + " needs a value").c_str());
    const std::string v = argv[++i];
    if (a == "--preset") preset = v;
    else if (a == "--batch") B = std::stoll(v);
    else if (a == "--prefix") P = std::stoll(v);
    else if (a == "--tokens") N = std::stoll(v);
    else if (a == "--threads") threads = std::stoi(v);
    else usage(("unknown option " + a).c_str());
  }
  try {
    select_blas_kernel(argv);
    if (threads > 0) {
      omp_set_num_threads(threads);
      openblas_set_num_threads(threads);
    }
    const LlamaConfig c = load_llama_config(std::string(LETHE_SOURCE_DIR) + "/configs/models/" + preset + ".yaml");
    if (P + N > c.max_seq_len) usage("prefix + tokens exceeds the model's max_seq_len");
    LlamaModel m(c);
    m.init_weights(1);
    Tensor prefix = Tensor::empty({B, P}, DType::i32);
    for (int64_t i = 0; i < B * P; ++i) prefix.data<int32_t>()[i] = int32_t((i * 7919) % c.vocab_size);
    Tensor logits = Tensor::empty({B, c.vocab_size}, DType::f32), next = Tensor::empty({B}, DType::i32);
    using clock = std::chrono::steady_clock;
    auto seconds = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };

    // Cached: one prefill, then one position per token.
    std::vector<int32_t> cached_ids;
    auto t0 = clock::now();
    m.decode_prefill(prefix, logits);
    for (int64_t s = 0; s < N; ++s) {
      argmax_rows(logits, next);
      cached_ids.push_back(next.data<int32_t>()[0]);
      if (s + 1 < N) m.decode_step(next, logits);
    }
    const double t_cached = seconds(t0);

    // Uncached: a forward over the whole context for every token.
    std::vector<int32_t> full_ids;
    Tensor ctx = prefix.clone();
    t0 = clock::now();
    for (int64_t s = 0; s < N; ++s) {
      m.decode_prefill(ctx, logits);
      argmax_rows(logits, next);
      full_ids.push_back(next.data<int32_t>()[0]);
      const int64_t T = ctx.dim(1);
      Tensor grown = Tensor::empty({B, T + 1}, DType::i32);
      for (int64_t b = 0; b < B; ++b) {
        std::copy_n(ctx.data<int32_t>() + b * T, T, grown.data<int32_t>() + b * (T + 1));
        grown.data<int32_t>()[b * (T + 1) + T] = next.data<int32_t>()[b];
      }
      ctx = grown;
    }
    const double t_full = seconds(t0);
    int64_t same = 0;
    for (size_t i = 0; i < cached_ids.size(); ++i) same += cached_ids[i] == full_ids[i];

    std::printf("%s\n", blas_kernel_line().c_str());
    std::printf("model %s (%lld layers, dim %lld, vocab %lld), batch %lld, prefix %lld, %lld new tokens, %d threads\n",
                c.name.c_str(), (long long)c.n_layers, (long long)c.dim, (long long)c.vocab_size, (long long)B,
                (long long)P, (long long)N, omp_get_max_threads());
    std::printf("%-34s %10s %12s\n", "decoding", "seconds", "tokens/s");
    std::printf("%-34s %10.2f %12.1f\n", "forward over the context per token", t_full, double(B * N) / t_full);
    std::printf("%-34s %10.2f %12.1f\n", "key/value cache", t_cached, double(B * N) / t_cached);
    std::printf("speed-up %.1fx; sequence 0 decodes the same token at %lld of %lld steps\n", t_full / t_cached,
                (long long)same, (long long)N);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
