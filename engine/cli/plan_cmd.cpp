// `lethe plan`: per-GPU memory and per-step communication of a run, before renting GPUs.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>

#include "engine/cli/commands.h"
#include "engine/core/error.h"
#include "engine/plan/memory_plan.h"
#include "engine/plan/plan_inputs.h"

namespace lethe::cli {
namespace {
using namespace lethe::plan;
using json = nlohmann::json;

const char* kPlanUsage =
    "usage: lethe plan MODEL [options]\n"
    "  Per-GPU memory (weights, grads, fp32 master, moments, activations, frozen reference)\n"
    "  and bytes moved per step per collective, and whether it fits on 80 GB and 141 GB GPUs.\n"
    "  MODEL is a configs/models/*.yaml path or a preset name (llama2-7b).\n"
    "options:\n"
    "  --tp N               tensor-parallel ranks (default 1)\n"
    "  --dp N               data-parallel ranks (default 1)\n"
    "  --batch B            micro-batch per data-parallel rank (default: the recipe's, else 1)\n"
    "  --seq T              sequence length (default: the recipe's, else the model's max_seq_len)\n"
    "  --precision P        bf16 (mixed: bf16 weights, fp32 grads, master + moments; default)\n"
    "                       or f32 (the CPU engine: f32 everything, no master copy)\n"
    "  --recipe R           a recipe YAML or configs/recipes name (ga_kl, rmu, ...); default: train\n"
    "  --recompute K        none, all, or the number of layers recomputed (default none)\n"
    "  --no-zero            replicate master + moments on every dp rank (default: ZeRO-1 shards them)\n"
    "  --headroom F         fraction of device memory kept free for workspace and\n"
    "                       fragmentation (default 0.10)\n"
    "  --tflops X           achieved bf16 TFLOP/s per GPU for the step-time model (default 400)\n"
    "  --tp-gbs G           tp link bus bandwidth, GB/s (default 360: NVLink 4 as NCCL measures it)\n"
    "  --dp-gbs G           dp bandwidth per GPU across nodes, GB/s (default 45: one 400 Gb/s port)\n"
    "  --latency-us U       fixed cost per collective, microseconds (default 15)\n"
    "  --json               machine-readable output\n";

struct Options {
  std::string model, recipe;
  int64_t tp = 1, dp = 1, batch = 0, seq = 0;
  std::string precision = "bf16", recompute = "none";
  bool zero1 = true, json = false;
  double headroom = 0.10;
  Links links;
};

int64_t to_int(const std::string& flag, const std::string& v) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LETHE_CHECK(used == v.size() && !v.empty(), flag, ": expected an integer, got '", v, "'");
  return x;
}

double to_double(const std::string& flag, const std::string& v) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LETHE_CHECK(used == v.size() && !v.empty(), flag, ": expected a number, got '", v, "'");
  return x;
}

Options parse(const std::vector<std::string>& args) {
  Options o;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i], v;
    const size_t eq = a.find('=');
    const bool has_eq = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_eq) v = a.substr(eq + 1), a = a.substr(0, eq);
    auto value = [&]() -> std::string {
      if (has_eq) return v;
      LETHE_CHECK(i + 1 < args.size(), a, ": missing value");
      return args[++i];
    };
    if (a == "--tp") o.tp = to_int(a, value());
    else if (a == "--dp") o.dp = to_int(a, value());
    else if (a == "--batch") o.batch = to_int(a, value());
    else if (a == "--seq") o.seq = to_int(a, value());
    else if (a == "--precision") o.precision = value();
    else if (a == "--recipe") o.recipe = value();
    else if (a == "--recompute") o.recompute = value();
    else if (a == "--headroom") o.headroom = to_double(a, value());
    else if (a == "--tflops") o.links.tflops = to_double(a, value());
    else if (a == "--tp-gbs") o.links.tp_gbs = to_double(a, value());
    else if (a == "--dp-gbs") o.links.dp_gbs = to_double(a, value());
    else if (a == "--latency-us") o.links.latency_us = to_double(a, value());
    else if (a == "--no-zero") o.zero1 = false;
    else if (a == "--json") o.json = true;
    else if (a.rfind("-", 0) == 0) LETHE_FAIL("plan: unknown option '", a, "' (see lethe plan --help)");
    else {
      LETHE_CHECK(o.model.empty(), "plan: unexpected argument '", a, "' (the model is '", o.model, "')");
      o.model = a;
    }
  }
  LETHE_CHECK(!o.model.empty(), "plan: no model given (a configs/models/*.yaml path or preset name)");
  LETHE_CHECK(o.precision == "bf16" || o.precision == "f32", "--precision: must be bf16 or f32, got '", o.precision,
              "'");
  LETHE_CHECK(o.headroom >= 0 && o.headroom < 1, "--headroom: must be in [0, 1), got ", o.headroom);
  LETHE_CHECK(o.links.tflops > 0, "--tflops: must be > 0, got ", o.links.tflops);
  LETHE_CHECK(o.links.tp_gbs > 0, "--tp-gbs: must be > 0, got ", o.links.tp_gbs);
  LETHE_CHECK(o.links.dp_gbs > 0, "--dp-gbs: must be > 0, got ", o.links.dp_gbs);
  LETHE_CHECK(o.links.latency_us >= 0, "--latency-us: must be >= 0, got ", o.links.latency_us);
  LETHE_CHECK(o.tp >= 1, "--tp: must be >= 1, got ", o.tp);
  LETHE_CHECK(o.dp >= 1, "--dp: must be >= 1, got ", o.dp);
  LETHE_CHECK(o.batch >= 0, "--batch: must be >= 1, got ", o.batch);
  LETHE_CHECK(o.seq >= 0, "--seq: must be >= 1, got ", o.seq);
  return o;
}

PlanInput build_input(const Options& o) {
  PlanInput in;
  in.model = resolve_model(o.model);
  in.tp = o.tp;
  in.dp = o.dp;
  in.precision = o.precision == "f32" ? Precision::f32 : Precision::bf16;
  in.zero1 = o.zero1;
  in.micro_batch = 1;
  in.seq_len = in.model.max_seq_len;
  if (!o.recipe.empty() && o.recipe != "train") {
    const Recipe r = load_recipe(find_config("recipes", o.recipe), {});
    in.recipe = recipe_needs(r, in.model);
    // The recipe's batch is the global batch; each dp rank runs its share, as the run does.
    in.micro_batch = std::max<int64_t>(1, r.batch_size / std::max<int64_t>(1, in.dp));
    in.seq_len = r.seq_len;
  }
  if (o.batch) in.micro_batch = o.batch;
  if (o.seq) in.seq_len = o.seq;
  if (o.recompute == "none") in.recompute = 0;
  else if (o.recompute == "all") in.recompute = in.model.n_layers;
  else {
    LETHE_CHECK(!o.recompute.empty() && o.recompute.find_first_not_of("0123456789") == std::string::npos,
                "--recompute: must be none, all or a number of layers, got '", o.recompute, "'");
    in.recompute = to_int("--recompute", o.recompute);
  }
  validate(in);
  return in;
}

constexpr double kGiB = double(1ull << 30);
std::string gib(double b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f", b / kGiB);
  return s;
}
std::string recompute_name(int64_t r, int64_t L) {
  if (r == 0) return "none";
  if (r == L) return "all " + std::to_string(L) + " layers";
  return "first " + std::to_string(r) + " of " + std::to_string(L) + " layers";
}
// The key to put in a train config for this choice.
std::string recompute_key(int64_t r, int64_t L) {
  return r == 0 ? "train.recompute=false" : r == L ? "train.recompute=true" : "train.recompute=" + std::to_string(r);
}

std::string count(double n) {
  char s[32];
  if (n >= 1e9) std::snprintf(s, sizeof s, "%.3f B", n / 1e9);
  else std::snprintf(s, sizeof s, "%.4g M", n / 1e6);
  return s;
}

// The memory table is in GiB, or MiB for models below 1 GiB (the CPU test models).
struct Unit {
  double bytes;
  const char* name;
};
Unit unit_for(double total) { return total >= kGiB ? Unit{kGiB, "GiB"} : Unit{double(1 << 20), "MiB"}; }
std::string in_unit(double b, Unit u) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f", b / u.bytes);
  return s;
}
void row(const std::string& what, double bytes, Unit u) {
  std::printf("  %-66s %9s\n", what.c_str(), in_unit(bytes, u).c_str());
}

void print_text(const PlanInput& in, const Options& o) {
  const MemoryPlan m = memory_plan(in);
  const LlamaConfig& c = in.model;
  const bool bf16 = in.precision == Precision::bf16;
  const std::string w = bf16 ? "bf16" : "f32";
  const std::string sh = in.zero1 && in.dp > 1 ? ", /dp" : "";
  PlanInput none = in, all = in;
  none.recompute = 0;
  all.recompute = c.n_layers;
  const Unit u = unit_for(m.total());

  std::printf("plan: %s (%s params), tp=%lld x dp=%lld = %lld GPU%s, micro-batch %lld x seq %lld, %s, %s\n",
              c.name.c_str(), count(double(c.n_params())).c_str(), (long long)in.tp, (long long)in.dp,
              (long long)(in.tp * in.dp), in.tp * in.dp == 1 ? "" : "s", (long long)in.micro_batch, (long long)in.seq_len,
              bf16 ? "bf16 mixed precision" : "f32", in.dp == 1 ? "no data parallelism" : in.zero1 ? "ZeRO-1" : "no ZeRO");
  std::printf("recipe: %s (%lld pass%s per micro-batch, grad_accum %lld)%s; recompute: %s\n\n",
              in.recipe.method.c_str(), (long long)in.recipe.passes, in.recipe.passes == 1 ? "" : "es",
              (long long)in.recipe.grad_accum,
              in.recipe.ref_last_layer >= 0 ? ", frozen reference model" : "",
              recompute_name(in.recompute, c.n_layers).c_str());
  if (m.params.trainable != m.params.total)
    std::printf("trains %s of the %s parameters per tp rank; master weights and moments still cover all\n\n",
                count(double(m.params.trainable)).c_str(), count(double(m.params.total)).c_str());
  std::printf("per-GPU memory%*s\n", 64, u.name);
  char what[128];
  std::snprintf(what, sizeof what, "weights (%s, %s params per tp rank)", w.c_str(),
                count(double(m.params.total)).c_str());
  row(what, m.weights, u);
  row(bf16 ? "grads (fp32, as the GPU engine keeps them)" : "grads (f32)", m.grads, u);
  const bool in_place = !bf16 && sh.empty();
  row(in_place ? "fp32 master weights (none: f32 updates in place)"
               : std::string("fp32 master weights") + (sh.empty() ? "" : " (/dp)"),
      m.master, u);
  row("optimizer moments (" + std::to_string(in.recipe.optimizer_states) + " x fp32" + sh + ")", m.moments, u);
  if (m.opt_scratch > 0)
    row(bf16 ? "ZeRO-1 fp32 gradient shard (/dp)" : "ZeRO-1 gradient shard (/dp)", m.opt_scratch, u);
  row("activations", m.activations(), u);
  row("  residual stream, (layers+1) x B*T x dim (kept when recomputing)", m.act_resid, u);
  row("  per-layer stored (q/k/v/o/gate/up/act /tp; norms not split)", m.act_layers, u);
  row("  head: final norm, logits [chunk rows, V/tp], loss buffers, q/k/v", m.act_head, u);
  row("  backward scratch (incl. d(logits) [chunk rows, V/tp])", m.act_backward, u);
  if (in.recipe.ref_last_layer >= 0) {
    row(std::string("frozen reference weights (") + (bf16 ? "bf16, layers 0.." : "f32 + grads, all layers; runs 0..") +
            std::to_string(in.recipe.ref_last_layer) + (in.recipe.ref_logits ? " + head)" : ")"),
        m.ref_weights, u);
    row("frozen reference forward buffers", m.ref_acts, u);
  }
  row("total", m.total(), u);
  std::printf("\nactivations: %s %s without recomputation, %s %s recomputing every layer\n",
              in_unit(memory_plan(none).activations(), u).c_str(), u.name,
              in_unit(memory_plan(all).activations(), u).c_str(), u.name);

  const auto coll = collectives(in);
  std::printf("\ncommunication per optimizer step, per GPU (ring: all-reduce 2(n-1)/n, "
              "reduce-scatter / all-gather (n-1)/n of the buffer):\n");
  if (coll.empty()) std::printf("  none (one GPU)\n");
  double tp_total = 0, dp_total = 0;
  for (const Collective& k : coll) {
    std::printf("  %-2s %-14s x%-5lld %9.2f MiB each  -> %9.3f GiB  %s\n", k.group.c_str(), k.op.c_str(),
                (long long)k.count, k.payload / (1 << 20), k.bytes() / kGiB, k.what.c_str());
    (k.group == "tp" ? tp_total : dp_total) += k.bytes();
  }
  if (!coll.empty()) {
    std::string t;
    if (in.tp > 1) t += " tp " + gib(tp_total) + " GiB";
    if (in.dp > 1) t += std::string(t.empty() ? "" : ",") + " dp " + gib(dp_total) + " GiB";
    std::printf("  total per step:%s\n", t.c_str());
  }

  if (!coll.empty()) {
    const StepTime t = step_time(in, o.links);
    auto ms = [](double s) { return s * 1e3; };
    auto pct = [&](double s) { return 100.0 * s / t.step(); };
    std::printf("\ntime per step, per GPU (a model: %.0f TFLOP/s achieved, tp %.0f GB/s, dp %.0f GB/s, %.0f us per "
                "collective; --tflops, --tp-gbs, --dp-gbs, --latency-us):\n",
                o.links.tflops, o.links.tp_gbs, o.links.dp_gbs, o.links.latency_us);
    std::printf("  compute                                                   %9.1f ms\n", ms(t.compute));
    if (in.tp > 1)
      std::printf("  tp all-reduces (each layer waits for its own: not hidden) %9.1f ms  %4.1f%% of the step\n",
                  ms(t.tp), pct(t.tp));
    if (in.dp > 1) {
      std::printf("  dp gradient %-14s %6.1f ms, hidden behind the last backward %6.1f ms: exposed %6.1f ms\n",
                  in.zero1 ? "reduce-scatter" : "all-reduce", ms(t.dp_reduce), ms(t.dp_hidden),
                  ms(t.dp_reduce - t.dp_hidden));
      if (in.zero1)
        std::printf("  dp weight all-gather       %6.1f ms, hidden behind the next forward %6.1f ms: exposed %6.1f ms\n",
                    ms(t.dp_gather), ms(t.dp_gather_hidden), ms(t.dp_gather - t.dp_gather_hidden));
    }
    std::printf("  step %.1f ms: compute %.1f%%, exposed communication %.1f%%\n", ms(t.step()), pct(t.compute),
                pct(t.exposed()));
  }

  std::printf("\nfit (usable = device memory minus %.0f%% headroom for cuBLAS/NCCL workspace, CUDA context and "
              "fragmentation):\n",
              o.headroom * 100);
  for (const Gpu& g : known_gpus()) {
    const double usable = g.bytes * (1 - o.headroom);
    const int64_t r = fitting_recompute(in, usable);
    std::printf("  %-26s ", (g.name + ":").c_str());
    if (m.total() <= usable) {
      std::printf("fits, %s of %s GiB usable with recompute %s", gib(m.total()).c_str(), gib(usable).c_str(),
                  recompute_name(in.recompute, c.n_layers).c_str());
      if (r < in.recompute) std::printf(" (recompute %s is enough)", recompute_name(r, c.n_layers).c_str());
      std::printf("\n");
    } else if (r >= 0) {
      PlanInput f = in;
      f.recompute = r;
      std::printf("does not fit with recompute %s (%s > %s GiB); fits recomputing %s (%s GiB): %s\n",
                  recompute_name(in.recompute, c.n_layers).c_str(), gib(m.total()).c_str(), gib(usable).c_str(),
                  recompute_name(r, c.n_layers).c_str(), gib(memory_plan(f).total()).c_str(),
                  recompute_key(r, c.n_layers).c_str());
    } else {
      std::printf("does not fit, even recomputing every layer (%s > %s GiB): raise tp or dp, or lower the "
                  "micro-batch or seq_len\n",
                  gib(memory_plan(all).total()).c_str(), gib(usable).c_str());
    }
  }
}

json to_json(const PlanInput& in, const Options& o) {
  const MemoryPlan m = memory_plan(in);
  PlanInput none = in, all = in;
  none.recompute = 0;
  all.recompute = in.model.n_layers;
  json j = {{"model", in.model.name}, {"tp", in.tp}, {"dp", in.dp}, {"micro_batch", in.micro_batch},
            {"seq_len", in.seq_len}, {"precision", in.precision == Precision::bf16 ? "bf16" : "f32"},
            {"zero1", in.zero1}, {"recipe", in.recipe.method}, {"recompute", in.recompute},
            {"params_per_rank", m.params.total}, {"trainable_per_rank", m.params.trainable}};
  j["bytes"] = {{"weights", m.weights},       {"grads", m.grads},           {"master", m.master},
                {"moments", m.moments},       {"opt_scratch", m.opt_scratch},
                {"act_resid", m.act_resid},   {"act_layers", m.act_layers},
                {"act_head", m.act_head},     {"act_backward", m.act_backward}, {"activations", m.activations()},
                {"ref_weights", m.ref_weights}, {"ref_acts", m.ref_acts},   {"total", m.total()}};
  j["activations_no_recompute"] = memory_plan(none).activations();
  j["activations_full_recompute"] = memory_plan(all).activations();
  j["collectives"] = json::array();
  for (const Collective& k : collectives(in))
    j["collectives"].push_back({{"group", k.group}, {"op", k.op}, {"what", k.what}, {"count", k.count},
                                {"payload", k.payload}, {"ring_factor", k.ring_factor}, {"bytes", k.bytes()}});
  if (in.tp * in.dp > 1) {
    const StepTime t = step_time(in, o.links);
    j["step_time"] = {{"tflops", o.links.tflops},   {"tp_gbs", o.links.tp_gbs},       {"dp_gbs", o.links.dp_gbs},
                      {"latency_us", o.links.latency_us}, {"compute_s", t.compute}, {"tp_s", t.tp},
                      {"dp_reduce_s", t.dp_reduce}, {"dp_hidden_s", t.dp_hidden}, {"dp_gather_s", t.dp_gather}, {"dp_gather_hidden_s", t.dp_gather_hidden},
                      {"exposed_s", t.exposed()},   {"step_s", t.step()}};
  }
  j["gpus"] = json::array();
  for (const Gpu& g : known_gpus()) {
    const double usable = g.bytes * (1 - o.headroom);
    j["gpus"].push_back({{"name", g.name}, {"bytes", g.bytes}, {"usable", usable}, {"fits", m.total() <= usable},
                         {"fitting_recompute", fitting_recompute(in, usable)}});
  }
  return j;
}

}  // namespace

int plan_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << kPlanUsage;
    return args.empty() ? 2 : 0;
  }
  const Options o = parse(args);
  const PlanInput in = build_input(o);
  if (o.json) std::cout << to_json(in, o).dump(2) << "\n";
  else print_text(in, o);
  return 0;
}

}  // namespace lethe::cli
