// Causal attention alone on the GPU (kernels/cuda/attention.h), forward, backward and
// forward+backward, for every kernel variant, at head_dim 128 on Llama-2-7B's heads
// (H = KV = 32) and a GQA shape (H = 32, KV = 8), with about 16384 tokens per batch.
// tools/bench/torch_attention.py times torch's SDPA flash backend on the same shapes;
// tools/gpu_check.sh runs both and prints the ratio. FLOPs are FlashAttention's count:
// causal forward 4 B H T^2 D / 2, backward 2.5x the forward (docs/perf.md).
//
// Each row also gives the largest difference of the variant's outputs (o; dq, dk, dv)
// from the default's on the same inputs: a sanity column, not a test (the GPU tests judge
// the kernels). The default row compares the default with its own first run, so it shows
// the run-to-run change that dq's atomics allow.
//
// The default kernels (the verified ones) run on every shape before any other variant
// does, and the JSON is rewritten after each measurement: an unverified kernel that
// faults ends the process but not the results before it.
//
//   lethe_bench_attention [--quick] [--json out.json]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "kernels/cuda/arena.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cast.h"
#include "tools/bench/gpu_bench.h"

namespace lethe::bench {
namespace {

constexpr const char* kTool = "lethe_bench_attention";
constexpr int64_t kD = 128, kTokens = 16384;

struct Shape {
  int64_t B, T, H, KV;
  std::string name() const {
    return "H" + std::to_string(H) + "/KV" + std::to_string(KV) + " T" + std::to_string(T) + " B" + std::to_string(B);
  }
  double fwd_flops() const { return 4.0 * double(B) * double(H) * double(T) * double(T) * double(kD) / 2; }
};

// A forward and a backward kernel timed together. Each backward variant runs after the
// forward of the same family: what a user who opts into it would run.
struct Variant {
  cuda::AttentionForwardKernel fwd;
  cuda::AttentionBackwardKernel bwd;
  std::string name() const {
    return std::string("fwd ") + cuda::attention_kernel_name(fwd) + " + bwd " + cuda::attention_kernel_name(bwd);
  }
  bool operator==(const Variant& o) const { return fwd == o.fwd && bwd == o.bwd; }
};
constexpr Variant kVariants[] = {
    {cuda::AttentionForwardKernel::wmma, cuda::AttentionBackwardKernel::wmma},
    {cuda::AttentionForwardKernel::mma, cuda::AttentionBackwardKernel::mma},
    {cuda::AttentionForwardKernel::mma, cuda::AttentionBackwardKernel::mma_deterministic},
};

// Device buffers of one shape in one allocation, the inputs (q, k, v, dout) filled from
// fixed seeds, uniform with standard deviation 1: the same values for every variant.
struct Buffers {
  explicit Buffers(const Shape& s)
      : nq(s.B * s.T * s.H * kD),
        nkv(s.B * s.T * s.KV * kD),
        arena(size_t(4 * nq + 4 * nkv) * sizeof(bf16) + size_t(nq) * 4 + size_t(s.B * s.H * s.T) * 4 +
              cuda::attention_backward_workspace_bytes(s.B, s.T, s.H, kD) + 16 * Arena::kAlign) {
    q = arena.alloc_n<bf16>(size_t(nq), "q"), o = arena.alloc_n<bf16>(size_t(nq), "o");
    dout = arena.alloc_n<bf16>(size_t(nq), "dout"), dq = arena.alloc_n<bf16>(size_t(nq), "dq");
    k = arena.alloc_n<bf16>(size_t(nkv), "k"), v = arena.alloc_n<bf16>(size_t(nkv), "v");
    dk = arena.alloc_n<bf16>(size_t(nkv), "dk"), dv = arena.alloc_n<bf16>(size_t(nkv), "dv");
    lse = arena.alloc_n<float>(size_t(s.B * s.H * s.T), "lse");
    ws = arena.alloc(cuda::attention_backward_workspace_bytes(s.B, s.T, s.H, kD), "backward workspace");
    float* scratch = arena.alloc_n<float>(size_t(nq), "fill scratch");
    const std::pair<bf16*, int64_t> inputs[] = {{q, nq}, {k, nkv}, {v, nkv}, {dout, nq}};
    uint64_t seed = 11;
    for (const auto& [p, n] : inputs) {
      cuda::fill_uniform(scratch, n, 1.f, seed++);
      cuda::cast_f32_to_bf16(scratch, p, n);
    }
    cuda::synchronize();
  }
  using Arena = cuda::Arena;
  int64_t nq, nkv;
  Arena arena;
  bf16 *q, *k, *v, *o, *dout, *dq, *dk, *dv;
  float* lse;
  void* ws;
};

std::vector<float> to_host(const bf16* p, int64_t n) {
  std::vector<bf16> h(static_cast<size_t>(n));
  cuda::copy_to_host(h.data(), p, size_t(n) * sizeof(bf16));
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = bf16_to_float(h[i]);
  return f;
}
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = d;  // NaN wins, so a kernel that writes NaN shows
  }
  return m;
}

struct Outputs {
  std::vector<float> o, dqkv;  // dq, dk, dv end to end
};
Outputs read_outputs(const Buffers& b) {
  Outputs r{to_host(b.o, b.nq), to_host(b.dq, b.nq)};
  for (const bf16* p : {b.dk, b.dv}) {
    const std::vector<float> x = to_host(p, b.nkv);
    r.dqkv.insert(r.dqkv.end(), x.begin(), x.end());
  }
  return r;
}

// Milliseconds per call of fn: one warm-up call, then enough calls to fill about target_s
// (at least 3, at most 50), timed with CUDA events.
double time_ms(const std::function<void()>& fn, double target_s) {
  fn();
  cuda::Timer t;
  t.start();
  fn();
  const double one = std::max(double(t.stop()), 1e-3);
  const int n = int(std::clamp(target_s * 1e3 / one, 3.0, 50.0));
  t.start();
  for (int i = 0; i < n; ++i) fn();
  const double ms = double(t.stop()) / n;
  cuda::check_launch(kTool);
  return ms;
}

struct Row {
  Shape shape;
  Variant variant;
  double fwd_ms = 0, bwd_ms = 0, fwd_bwd_ms = 0, diff_o = 0, diff_dqkv = 0;
};

void forward(const Shape& s, Buffers& b) {
  cuda::attention_forward(b.q, b.k, b.v, 1.f / std::sqrt(float(kD)), b.o, b.lse, s.B, s.T, s.H, s.KV, kD);
}
void backward(const Shape& s, Buffers& b) {
  cuda::attention_backward(b.dout, b.q, b.k, b.v, b.o, b.lse, 1.f / std::sqrt(float(kD)), b.dq, b.dk, b.dv, b.ws, s.B,
                           s.T, s.H, s.KV, kD);
}
void use_kernels(const Variant& v) {
  cuda::set_attention_forward_kernel(v.fwd);
  cuda::set_attention_backward_kernel(v.bwd);
}

// The outputs of one forward and backward with variant v.
Outputs outputs_of(const Variant& v, const Shape& s, Buffers& b) {
  use_kernels(v);
  forward(s, b);
  backward(s, b);
  return read_outputs(b);
}

Row measure(const Shape& s, const Variant& v, Buffers& b, const Outputs& ref, double target_s) {
  use_kernels(v);
  Row r{s, v};
  r.fwd_ms = time_ms([&] { forward(s, b); }, target_s);
  r.bwd_ms = time_ms([&] { backward(s, b); }, target_s);  // reads this variant's o and lse
  r.fwd_bwd_ms = time_ms([&] {
    forward(s, b);
    backward(s, b);
  }, target_s);
  const Outputs out = read_outputs(b);
  r.diff_o = max_abs_diff(out.o, ref.o);
  r.diff_dqkv = max_abs_diff(out.dqkv, ref.dqkv);
  return r;
}

// JSON has no NaN (nlohmann writes null): a NaN difference, a kernel that wrote NaN, is
// kept as the string "nan".
nlohmann::json number(double x) { return std::isnan(x) ? nlohmann::json("nan") : nlohmann::json(x); }

nlohmann::json row_json(const Row& r) {
  const double f = r.shape.fwd_flops();
  return {{"shape", r.shape.name()},
          {"batch", r.shape.B},
          {"seq", r.shape.T},
          {"heads", r.shape.H},
          {"kv_heads", r.shape.KV},
          {"head_dim", kD},
          {"variant", r.variant.name()},
          {"forward_kernel", cuda::attention_kernel_name(r.variant.fwd)},
          {"backward_kernel", cuda::attention_kernel_name(r.variant.bwd)},
          {"fwd_ms", r.fwd_ms},
          {"bwd_ms", r.bwd_ms},
          {"fwd_bwd_ms", r.fwd_bwd_ms},
          {"fwd_tflops", f / (r.fwd_ms / 1e3) / 1e12},
          {"bwd_tflops", 2.5 * f / (r.bwd_ms / 1e3) / 1e12},
          {"fwd_bwd_tflops", 3.5 * f / (r.fwd_bwd_ms / 1e3) / 1e12},
          {"max_abs_diff_o", number(r.diff_o)},
          {"max_abs_diff_dqkv", number(r.diff_dqkv)}};
}

void print_row(const Row& r, const nlohmann::json& j) {
  std::printf("%-22s %-36s %7.1f %7.1f %8.1f   %9.2e %9.2e\n", r.shape.name().c_str(), r.variant.name().c_str(),
              j["fwd_tflops"].get<double>(), j["bwd_tflops"].get<double>(), j["fwd_bwd_tflops"].get<double>(),
              r.diff_o, r.diff_dqkv);
  std::fflush(stdout);
}

int run(int argc, char** argv) {
  bool quick = false;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--json out.json]\n", kTool);
      return 2;
    }
  }
  if (!gpu_usable(kTool)) return 2;
  const GpuInfo gpu = describe_gpu();
  std::vector<Shape> shapes;
  for (int64_t kv : {int64_t(32), int64_t(8)})
    for (int64_t T : {int64_t(1024), int64_t(2048), int64_t(4096)})
      if (!quick || (T == 4096 && kv == 32)) shapes.push_back({kTokens / T, T, 32, kv});
  const double target_s = quick ? 0.05 : 0.15;

  const Variant def{cuda::attention_forward_kernel(), cuda::attention_backward_kernel()};
  std::vector<Variant> others;
  for (const Variant& v : kVariants)
    if (!(v == def)) others.push_back(v);

  nlohmann::json out = gpu_json(gpu);
  out["head_dim"] = kD;
  out["causal"] = true;
  out["flops"] = "FlashAttention's: forward 4 B H T^2 D / 2 (causal), backward 2.5x forward";
  out["default_variant"] = def.name();
  out["results"] = nlohmann::json::array();
  std::printf("causal attention, head_dim %lld, bf16; TFLOP/s with FlashAttention's FLOP count (forward "
              "4 B H T^2 D / 2, backward 2.5x); max|diff| against the default variant's outputs\n",
              (long long)kD);
  std::printf("%-22s %-36s %7s %7s %8s   %9s %9s\n", "shape", "variant", "fwd", "bwd", "fwd+bwd", "max|do|",
              "max|dqkv|");
  auto record = [&](const Row& r) -> bool {
    const nlohmann::json j = row_json(r);
    print_row(r, j);
    out["results"].push_back(j);
    return write_json(json_path, out, kTool);
  };
  // The default, verified kernels on every shape first.
  for (const Shape& s : shapes) {
    Buffers b(s);
    const Outputs first = outputs_of(def, s, b);
    if (!record(measure(s, def, b, first, target_s))) return 1;
  }
  // Then the opt-in ones, against the default's outputs on the same inputs.
  bool bad = false;
  for (const Shape& s : shapes) {
    Buffers b(s);
    const Outputs ref = outputs_of(def, s, b);
    for (const Variant& v : others) {
      try {
        if (!record(measure(s, v, b, ref, target_s))) return 1;
      } catch (const Error& e) {
        // A refused launch leaves the context usable, so the other variants still run; a
        // fault does not, and the next shape's allocation ends the run.
        std::fprintf(stderr, "%s: %s, %s: %s\n", kTool, s.name().c_str(), v.name().c_str(), e.what());
        out["results"].push_back({{"shape", s.name()}, {"variant", v.name()}, {"error", e.what()}});
        if (!write_json(json_path, out, kTool)) return 1;
        bad = true;
      }
    }
  }
  use_kernels(def);
  return bad ? 1 : 0;
}

}  // namespace
}  // namespace lethe::bench

int main(int argc, char** argv) {
  return lethe::bench::bench_main(lethe::bench::kTool, lethe::bench::run, argc, argv);
}
