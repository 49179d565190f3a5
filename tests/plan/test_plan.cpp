// `lethe plan`: the Llama-2-7B breakdown and fit verdict, the counts behind it, recipes
// with a frozen reference, recompute suggestions, and clear errors for bad inputs.
#include <nlohmann/json.hpp>

#include <algorithm>

#include "engine/plan/device_fit.h"
#include "engine/plan/host_fit.h"
#include "engine/plan/plan_inputs.h"
#include "tests/plan/run_util.h"

namespace {
using lethe::test::Outcome;
using json = nlohmann::json;

class Plan : public lethe::test::TempDirTest {
 protected:
  json plan_json(std::vector<std::string> args) {
    args.insert(args.begin(), "plan");
    args.push_back("--json");
    const Outcome r = lethe(args);
    EXPECT_EQ(r.code, 0) << r.err;
    return json::parse(r.out);
  }
  static std::string line_with(const std::string& text, const std::string& key) {
    const size_t a = text.find(key);
    if (a == std::string::npos) return "";
    return text.substr(a, text.find('\n', a) - a);
  }
  // What the fit section says about one GPU: the text after "NAME:" and its padding.
  static std::string verdict(const std::string& text, const std::string& gpu) {
    const std::string line = line_with(text, gpu);
    if (line.empty()) return "";
    const size_t b = line.find_first_not_of(' ', gpu.size());
    return b == std::string::npos ? "" : line.substr(b);
  }
};

constexpr double kGiB = double(1ull << 30);
const std::string kLlama2 = std::string(LETHE_SOURCE_DIR) + "/configs/models/llama2-7b.yaml";
constexpr int64_t kLlama2Params = 6738415616;
constexpr int64_t kLlama2Norms = 65 * 4096;  // 2 per layer + the final norm, replicated over tp

TEST_F(Plan, Llama2On8GpusFits80GbWithBreakdown) {
  const Outcome r = lethe({"plan", kLlama2, "--tp", "2", "--dp", "4"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* row : {"weights (bf16", "grads (fp32", "fp32 master weights", "optimizer moments (2 x fp32, /dp)",
                          "activations", "residual stream", "per-layer stored", "logits [chunk rows, V/tp]", "total",
                          "tp all-reduce", "dp reduce-scatter", "dp all-gather"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
  EXPECT_EQ(verdict(r.out, "80 GB (H100 / A100 80GB):").rfind("fits, 42.00 of 71.68 GiB usable", 0), 0u) << r.out;
  EXPECT_EQ(verdict(r.out, "141 GB (H200):").rfind("fits, 42.00 of 126.36 GiB usable", 0), 0u) << r.out;
}

TEST_F(Plan, Llama2StatesAreExactAndActivationsMatchTheLayerCount) {
  const json j = plan_json({"llama2-7b", "--tp", "2", "--dp", "4"});  // preset by name
  const int64_t p = (kLlama2Params - kLlama2Norms) / 2 + kLlama2Norms;
  EXPECT_EQ(j["params_per_rank"].get<int64_t>(), p);
  const json& b = j["bytes"];
  EXPECT_DOUBLE_EQ(b["weights"].get<double>(), 2.0 * double(p));
  EXPECT_DOUBLE_EQ(b["grads"].get<double>(), 4.0 * double(p));  // fp32 weight gradients under bf16
  const json f32 = plan_json({"llama2-7b", "--tp", "2", "--dp", "4", "--precision", "f32"});
  EXPECT_DOUBLE_EQ(f32["bytes"]["grads"].get<double>(), 4.0 * double(p));  // the same in both modes
  EXPECT_DOUBLE_EQ(f32["bytes"]["weights"].get<double>(), 4.0 * double(p));
  EXPECT_DOUBLE_EQ(b["master"].get<double>(), 4.0 * double(p) / 4);   // ZeRO-1 over dp=4
  EXPECT_DOUBLE_EQ(b["moments"].get<double>(), 8.0 * double(p) / 4);
  EXPECT_DOUBLE_EQ(b["opt_scratch"].get<double>(), 4.0 * double(p) / 4);  // fp32 gradient shard
  // 32 layers x (3 replicated [N, C] + q, o, k, v, gate, up, act split over tp) in bf16,
  // + rstd1, rstd2, lse [N, H/tp] in fp32; N = 4096 tokens.
  EXPECT_DOUBLE_EQ(b["act_layers"].get<double>(), 9706668032.0);
  EXPECT_DOUBLE_EQ(b["act_resid"].get<double>(), 33.0 * 4096 * 4096 * 2);
  // The loss path's logits: R = 2^25 / (32000 / 2) = 2097 rows of V/tp in the head, and
  // their gradient in the backward scratch, not N = 4096.
  const double R = 2097, N = 4096, V = 16000;
  // tmp_, the RoPE tables, the fused q/k/v projection's [N, (q + 2 kv) / tp] output (and
  // dy), the fp32 [N, C] buffer of the tp sums, then xf_, rstdf_, the logits chunk,
  // logprobs, lse and the token weights.
  EXPECT_DOUBLE_EQ(b["act_head"].get<double>(), N * 4096 * 2 + 2 * 4096.0 * 64 * 4 + N * (3 * 4096 / 2) * 2 +
                                                    N * 4096 * 4 + N * 4096 * 2 + N * 4 + R * V * 2 + 2 * N * 4 +
                                                    N * 4);
  // 6.28 weights + 12.55 grads + 3.14 master + 6.28 moments + 3.14 shard + 10.62 activations.
  EXPECT_NEAR(b["total"].get<double>() / kGiB, 42.00, 0.01);
  EXPECT_LT(j["activations_full_recompute"].get<double>(), 0.2 * j["activations_no_recompute"].get<double>());
}

TEST_F(Plan, ParamCountsSumToTheModelAtTp1) {
  const json j = plan_json({kLlama2});
  EXPECT_EQ(j["params_per_rank"].get<int64_t>(), kLlama2Params);
  EXPECT_DOUBLE_EQ(j["bytes"]["moments"].get<double>(), 8.0 * kLlama2Params);  // dp=1: nothing to shard
  EXPECT_TRUE(j["collectives"].empty());
}

TEST_F(Plan, CollectivesCountTwoAllReducesPerLayerEachWay) {
  const json j = plan_json({kLlama2, "--tp", "2", "--dp", "4", "--recompute", "all"});
  const double act = 4096.0 * 4096 * 4;  // B*T x dim: tp sums travel in fp32
  int64_t tp_big = 0;
  for (const json& c : j["collectives"]) {
    if (c["group"] == "tp" && c["payload"].get<double>() == act) {
      tp_big += c["count"].get<int64_t>();
      EXPECT_DOUBLE_EQ(c["ring_factor"].get<double>(), 1.0);  // 2(n-1)/n at n=2
    }
    if (c["group"] == "dp") {
      // fp32 gradients are reduce-scattered; the bf16 weights are gathered.
      const double bytes = c["op"] == "reduce-scatter" ? 4.0 : 2.0;
      EXPECT_DOUBLE_EQ(c["payload"].get<double>(), bytes * j["params_per_rank"].get<double>()) << c["op"];
      EXPECT_DOUBLE_EQ(c["ring_factor"].get<double>(), 0.75);  // (n-1)/n at n=4
    }
  }
  // 2 forward + 2 backward per layer, 2 more per recomputed layer, embedding, lm_head.
  EXPECT_EQ(tp_big, 4 * 32 + 2 * 32 + 2);
  const json n = plan_json({kLlama2, "--dp", "4", "--no-zero"});
  ASSERT_EQ(n["collectives"].size(), 1u);
  EXPECT_EQ(n["collectives"][0]["op"], "all-reduce");
  EXPECT_DOUBLE_EQ(n["collectives"][0]["ring_factor"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(n["collectives"][0]["payload"].get<double>(), 4.0 * kLlama2Params);  // fp32 gradients
  EXPECT_DOUBLE_EQ(n["bytes"]["moments"].get<double>(), 8.0 * kLlama2Params);
}

// The step-time model is the collectives' bytes over the stated bandwidths plus a latency
// per call, against the FLOPs at the stated rate; the dp reduction hides behind at most the
// last backward (two thirds of a micro-batch's compute), the ZeRO all-gather not at all.
TEST_F(Plan, StepTimeAddsTheExposedCommunicationToTheCompute) {
  auto model = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> a{kLlama2, "--tp", "2", "--dp", "4", "--seq", "4096", "--batch", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return plan_json(a);
  };
  const json j = model({"--tflops", "500", "--tp-gbs", "400", "--dp-gbs", "50", "--latency-us", "10"});
  double tp_bytes = 0, rs_bytes = 0, ag_bytes = 0;
  int64_t tp_calls = 0;
  for (const json& c : j["collectives"]) {
    if (c["group"] == "tp") tp_bytes += c["bytes"].get<double>(), tp_calls += c["count"].get<int64_t>();
    else if (c["op"] == "reduce-scatter") rs_bytes += c["bytes"].get<double>();
    else ag_bytes += c["bytes"].get<double>();
  }
  const json& t = j["step_time"];
  // Llama-2-7B at T = 4096: 6 per matmul parameter (every weight but the embedding table
  // and the norms) + 6 L T d for attention, per token; half per tp rank.
  const double matmul = double(kLlama2Params) - 32000.0 * 4096 - double(kLlama2Norms);
  const double flops = (6.0 * matmul + 6.0 * 32 * 4096 * 4096) * 4096 / 2;
  EXPECT_NEAR(t["compute_s"].get<double>(), flops / 500e12, 1e-12 * flops / 500e12);
  EXPECT_DOUBLE_EQ(t["tp_s"].get<double>(), tp_bytes / 400e9 + double(tp_calls) * 10e-6);
  EXPECT_DOUBLE_EQ(t["dp_reduce_s"].get<double>(), rs_bytes / 50e9 + 10e-6);
  EXPECT_DOUBLE_EQ(t["dp_gather_s"].get<double>(), ag_bytes / 50e9 + 10e-6);
  // A slow network: the reduction outlasts the backward, which hides two thirds of a step.
  EXPECT_DOUBLE_EQ(t["dp_hidden_s"].get<double>(), t["compute_s"].get<double>() * 2 / 3);
  // The weight all-gather hides behind the next forward (a third of the step: one
  // micro-batch here) up to its length.
  EXPECT_DOUBLE_EQ(t["dp_gather_hidden_s"].get<double>(),
                   std::min(t["dp_gather_s"].get<double>(), t["compute_s"].get<double>() / 3));
  EXPECT_DOUBLE_EQ(t["step_s"].get<double>(), t["compute_s"].get<double>() + t["tp_s"].get<double>() +
                                                  t["dp_reduce_s"].get<double>() - t["dp_hidden_s"].get<double>() +
                                                  t["dp_gather_s"].get<double>() - t["dp_gather_hidden_s"].get<double>());
  // A fast one: the reduction hides entirely.
  const json f = model({"--dp-gbs", "4000"})["step_time"];
  EXPECT_DOUBLE_EQ(f["dp_hidden_s"].get<double>(), f["dp_reduce_s"].get<double>());
  // One GPU: no step-time model (there is no communication to weigh).
  EXPECT_FALSE(plan_json({kLlama2}).contains("step_time"));
  const Outcome bad = lethe({"plan", kLlama2, "--tp", "2", "--tp-gbs", "0"});
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("--tp-gbs: must be > 0"), std::string::npos) << bad.err;
}

TEST_F(Plan, RecipesWithAFrozenReference) {
  const int64_t p = (kLlama2Params - kLlama2Norms) / 2 + kLlama2Norms;
  const json kl = plan_json({kLlama2, "--tp", "2", "--recipe", "ga_kl"});
  EXPECT_EQ(kl["recipe"], "ga_kl");
  EXPECT_EQ(kl["micro_batch"].get<int64_t>(), 8);  // the recipe's batch and seq_len
  EXPECT_EQ(kl["seq_len"].get<int64_t>(), 128);
  EXPECT_DOUBLE_EQ(kl["bytes"]["ref_weights"].get<double>(), 2.0 * double(p));  // whole model, bf16
  // Under dp each rank runs batch_size / dp sequences of the recipe's global batch.
  EXPECT_EQ(plan_json({kLlama2, "--tp", "2", "--dp", "4", "--recipe", "ga_kl"})["micro_batch"].get<int64_t>(), 2);

  const json npo = plan_json({kLlama2, "--tp", "2", "--recipe", "npo"});  // caches reference log-probs
  EXPECT_DOUBLE_EQ(npo["bytes"]["ref_weights"].get<double>(), 0.0);
  // KL runs both models' heads in chunks of R = min(N, 2^25 / (V/tp)) rows, as GA's loss
  // path does: at 1 x 4096 tokens R = 2097, and the trained model holds the same
  // activations under either recipe; the reference adds its final-norm output and one chunk.
  const json ga = plan_json({kLlama2, "--tp", "2", "--recipe", "ga", "--seq", "4096", "--batch", "1"});
  const json kl_long = plan_json({kLlama2, "--tp", "2", "--recipe", "ga_kl", "--seq", "4096", "--batch", "1"});
  EXPECT_DOUBLE_EQ(kl_long["bytes"]["act_backward"].get<double>(), ga["bytes"]["act_backward"].get<double>());
  EXPECT_DOUBLE_EQ(kl_long["bytes"]["act_head"].get<double>(), ga["bytes"]["act_head"].get<double>());
  // The reference is forward-only: its residual stream (33 x [N, C]), tmp_ and the final
  // norm's output ([N, C] each), the rope tables, the fused q/k/v output ([N, 3 C / tp]),
  // rstd, log-probs and lse ([N] fp32 each), one chunk of logits, and exactly one layer's
  // working set.
  const double N = 4096, C = 4096, R = 2097, V = 16000, rope = 2 * 4096 * 64 * 4;
  const double layer_set = kl_long["bytes"]["ref_acts"].get<double>() - 35 * N * C * 2 - rope - N * (3 * C / 2) * 2 -
                           3 * N * 4 - R * V * 2;
  EXPECT_NEAR(layer_set / (kl_long["bytes"]["act_layers"].get<double>() / 32), 1.0, 1e-12);

  // RMU at layer 2: the reference holds layers 0..2 only, with the embedding, final norm
  // and head (as the engine loads it); trains 3 down_proj, but, as the engine's optimizer
  // does, allocates master and moments for every parameter.
  const std::string rmu_recipe = std::string(LETHE_SOURCE_DIR) + "/configs/recipes/rmu.yaml";
  const json rmu = plan_json({kLlama2, "--tp", "2", "--recipe", rmu_recipe});
  const int64_t per_layer = (4 * 4096 * 4096 + 3 * 4096 * 11008) / 2 + 2 * 4096;  // tp=2 halves the matrices
  const int64_t p3 = p - 29 * per_layer;
  EXPECT_DOUBLE_EQ(rmu["bytes"]["ref_weights"].get<double>(), 2.0 * double(p3));
  EXPECT_EQ(rmu["trainable_per_rank"].get<int64_t>(), 3 * 4096 * 11008 / 2);
  EXPECT_DOUBLE_EQ(rmu["bytes"]["moments"].get<double>(), 8.0 * double(p));
  // Only layers 0..2 run. A device allocates every layer's buffers for the batch, as many
  // stored sets as GA+KL's; on the CPU only the 3 sets the forward writes are resident.
  EXPECT_NEAR(rmu["bytes"]["act_layers"].get<double>() / kl["bytes"]["act_layers"].get<double>(), 1.0, 1e-12);
  const json rmu_cpu = plan_json({kLlama2, "--tp", "2", "--precision", "f32", "--recipe", rmu_recipe});
  const json kl_cpu = plan_json({kLlama2, "--tp", "2", "--precision", "f32", "--recipe", "ga_kl"});
  EXPECT_NEAR(rmu_cpu["bytes"]["act_layers"].get<double>() / kl_cpu["bytes"]["act_layers"].get<double>(), 3.0 / 32,
              1e-12);
  EXPECT_DOUBLE_EQ(rmu_cpu["bytes"]["ref_weights"].get<double>(), 4.0 * double(p3));  // f32, no gradient set
}

TEST_F(Plan, KvHeadsReplicateWhenTpDoesNotDivideThem) {
  // Mistral-7B: 8 kv heads, tp=16: every rank holds k_proj / v_proj whole (as the engine's
  // TpLayout does), sums their gradients over tp, and repeats one kv head per query head.
  const json j = plan_json({"mistral-7b", "--tp", "16", "--seq", "4096"});
  const int64_t C = 4096, kv = 1024, L = 32, F = 14336, V = 32768;
  const int64_t layer = (2 * C * C + 3 * F * C) / 16 + 2 * kv * C + 2 * C;
  EXPECT_EQ(j["params_per_rank"].get<int64_t>(), 2 * V * C / 16 + L * layer + C);
  bool found = false;
  for (const json& c : j["collectives"])
    if (c["what"].get<std::string>().find("replicated k/v weight grads") != std::string::npos) {
      found = true;
      EXPECT_EQ(c["count"].get<int64_t>(), 2 * L);
      EXPECT_DOUBLE_EQ(c["payload"].get<double>(), 4.0 * kv * C);  // fp32 weight gradients
    }
  EXPECT_TRUE(found) << j["collectives"].dump(1);
  // Stored k and v per layer: one head per local query head (2 heads of 128), not 8/16.
  const json t8 = plan_json({"mistral-7b", "--tp", "8", "--seq", "4096"});  // 1 kv head per rank, split
  const double N = 4096, per_layer_16 = 3 * N * C * 2 + N * (2 * 256 + 2 * 256 + 3 * F / 16) * 2 + (2 * N + 2 * N) * 4;
  EXPECT_DOUBLE_EQ(j["bytes"]["act_layers"].get<double>(), L * per_layer_16);
  EXPECT_GT(t8["bytes"]["act_layers"].get<double>(), j["bytes"]["act_layers"].get<double>());
}

TEST_F(Plan, SuggestsRecomputationWhenActivationsDoNotFit) {
  const Outcome r = lethe({"plan", kLlama2, "--dp", "8", "--batch", "4"});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string fit80 = verdict(r.out, "80 GB (H100 / A100 80GB):");
  EXPECT_EQ(fit80.rfind("does not fit with recompute none", 0), 0u) << r.out;
  EXPECT_NE(fit80.find("fits recomputing"), std::string::npos) << r.out;
  EXPECT_NE(fit80.find("train.recompute="), std::string::npos) << r.out;
  const json j = plan_json({kLlama2, "--dp", "8", "--batch", "4"});
  const int64_t k = j["gpus"][0]["fitting_recompute"].get<int64_t>();
  EXPECT_GT(k, 1);
  EXPECT_LE(k, 32);
  // The suggestion is the smallest that fits: one layer fewer does not.
  const json less = plan_json({kLlama2, "--dp", "8", "--batch", "4", "--recompute", std::to_string(k - 1)});
  EXPECT_FALSE(less["gpus"][0]["fits"].get<bool>());
  const json at = plan_json({kLlama2, "--dp", "8", "--batch", "4", "--recompute", std::to_string(k)});
  EXPECT_TRUE(at["gpus"][0]["fits"].get<bool>());

  // Llama-3-8B on one GPU: 18 bytes per parameter of states alone exceed 80 GB.
  const Outcome one = lethe({"plan", "llama3-8b"});
  ASSERT_EQ(one.code, 0) << one.err;
  EXPECT_EQ(verdict(one.out, "80 GB (H100 / A100 80GB):").rfind("does not fit, even recomputing every layer", 0), 0u)
      << one.out;
}

TEST_F(Plan, BadInputsGiveClearErrors) {
  const std::string odd_vocab = write("odd.yaml", "name: odd-vocab\nvocab_size: 1000\ndim: 256\nn_layers: 2\n"
                                                  "n_heads: 16\nn_kv_heads: 16\nffn_dim: 512\n");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases{
      {{"plan", kLlama2, "--tp", "3"}, "tp=3 does not divide n_heads (32) of model llama2-7b"},
      {{"plan", odd_vocab, "--tp", "16"}, "tp=16 does not divide vocab_size (1000) of model odd-vocab"},
      {{"plan", "llama2-7b", "--tp", "64"}, "tp=64 does not divide n_heads (32)"},
      {{"plan", "llama9-1t"}, "unknown model preset 'llama9-1t': not a file and not in configs/models (known: "},
      {{"plan", kLlama2, "--dp", "0"}, "--dp: must be >= 1, got 0"},
      {{"plan", kLlama2, "--tp", "two"}, "--tp: expected an integer, got 'two'"},
      {{"plan", kLlama2, "--precision", "fp8"}, "--precision: must be bf16 or f32, got 'fp8'"},
      {{"plan", kLlama2, "--seq", "8192"}, "seq_len 8192 outside [1, 4096]"},
      {{"plan", kLlama2, "--recipe", "forget-everything"}, "unknown recipe 'forget-everything'"},
      {{"plan", kLlama2, "--frobnicate"}, "unknown option '--frobnicate'"},
      {{"plan", kLlama2, "--headroom", "lots"}, "--headroom: expected a number, got 'lots'"},
      {{"plan", kLlama2, "--recompute", "some"}, "--recompute: must be none, all or a number of layers, got 'some'"},
      {{"plan", kLlama2, "--recompute", "33"}, "recompute must be in [0, 32], got 33"},
  };
  for (const Case& c : cases) {
    const Outcome r = lethe(c.args);
    EXPECT_EQ(r.code, 1) << c.message;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << "want: " << c.message << "\ngot: " << r.err;
    EXPECT_EQ(r.err.find("internal error"), std::string::npos) << r.err;
  }
  EXPECT_NE(lethe({"plan", "llama9-1t"}).err.find("llama2-7b"), std::string::npos);  // lists the presets
  EXPECT_EQ(lethe({"plan"}).code, 2);
  const Outcome help = lethe({"plan", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--recompute"), std::string::npos);
}

}  // namespace

namespace lethe::test {
namespace {

// The CPU engine holds every tensor in f32: the f32 plan, plus the fp32 master copy under
// the emulated bf16 policy (sharded away under ZeRO-1 with dp > 1, as the plan shards it).
TEST(HostFit, CpuBytesAreTheF32PlanPlusTheMasterUnderBf16) {
  plan::PlanInput in;
  in.model = plan::resolve_model("tiny");
  in.micro_batch = 8;
  in.seq_len = 128;
  in.precision = Precision::f32;
  const plan::MemoryPlan m = plan::memory_plan(in);
  EXPECT_DOUBLE_EQ(plan::cpu_process_bytes(in), m.total());
  in.precision = Precision::bf16;
  EXPECT_DOUBLE_EQ(plan::cpu_process_bytes(in), m.total() + 4.0 * double(m.params.total));
}

// The node's memory is shared by the processes launched on it.
TEST(HostFit, LocalProcessesShareTheNode) {
  ::unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  ::unsetenv("MPI_LOCALNRANKS");
  ::unsetenv("SLURM_NTASKS_PER_NODE");
  const double one = plan::host_bytes_per_process();
  ASSERT_GT(one, 0);
  ::setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
  const double four = plan::host_bytes_per_process();
  ::unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  // MemAvailable moves between the two reads; a quarter within 10% of the first.
  EXPECT_NEAR(four / one, 0.25, 0.025);
}

// A GPU run is held against its device by the GPU engine's plan, less the headroom `lethe
// plan` assumes; the refusal names the plan's parts and the smallest recomputation that
// fits. Llama-2-7B GA+GD with AdamW in bf16: weights 12.6 GiB, fp32 gradients, master and
// moments 4 x 25.1 GiB, so 113 GiB of model states before any activation.
TEST(DeviceFit, Llama2GaGdFitsOneH200WithRecomputationAndIsRefusedWithout) {
  plan::PlanInput in;
  in.model = plan::resolve_model("llama2-7b");
  in.micro_batch = 1;
  in.seq_len = 4096;
  in.precision = Precision::bf16;
  in.recipe.passes = 2;  // a forget and a retain term
  const double h200 = 150e9, h100 = 85e9;  // about what the driver reports for 141 / 80 GB
  in.recompute = in.model.n_layers;
  const plan::MemoryPlan all = plan::memory_plan(in);
  EXPECT_LE(all.total(), h200 * (1 - plan::kDeviceHeadroom));
  EXPECT_NO_THROW(plan::check_device_fit(in, "r.yaml", "NVIDIA H200", h200));
  in.recompute = 0;
  const plan::MemoryPlan none = plan::memory_plan(in);
  ASSERT_GT(none.total(), h200 * (1 - plan::kDeviceHeadroom)) << "the case must not fit without recomputation";
  const int64_t k = plan::fitting_recompute(in, h200 * (1 - plan::kDeviceHeadroom));
  ASSERT_GT(k, 0);
  try {
    plan::check_device_fit(in, "r.yaml", "NVIDIA H200", h200);
    ADD_FAILURE() << "a plan of " << none.total() / kGiB << " GiB passed";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const std::string& part : std::vector<std::string>{"r.yaml: this run needs about", "per GPU by its plan", "weights 12.55 GiB",
                                   "NVIDIA H200 offers", "nothing was started",
                                   "set train.recompute: " + std::to_string(k) + " (the plan then fits)"})
      EXPECT_NE(m.find(part), std::string::npos) << part << "\n" << m;
  }
  // An 80 GB card cannot hold the model states at all: recomputing every layer is not
  // enough, and the message says what all of them would need.
  try {
    plan::check_device_fit(in, "r.yaml", "NVIDIA H100", h100);
    ADD_FAILURE() << "7B GA+GD on one 80 GB card passed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("recompute layers with train.recompute (all of them: "), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lethe::test
