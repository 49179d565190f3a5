// The f32 plan against a measured CPU run: `lethe train` on a 13M-parameter model (model
// memory, ~0.35 GiB, dwarfs the ~20 MiB process baseline) and a negligible model on the
// same data. peak RSS(model) - peak RSS(negligible model) must match plan's total within
// 15%, with every layer stored and with recomputation (which changes the activations only).
#include <nlohmann/json.hpp>

#include <cmath>

#include "tests/plan/run_util.h"

namespace {
using lethe::test::Outcome;

class PlanMemory : public lethe::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    std::string corpus;
    const char* words[] = {"alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta "};
    for (int i = 0; i < 20000; ++i) corpus += words[(i * 7 + i / 5) % 6];
    write("corpus.txt", corpus);
    write("big.yaml",
          "name: plan-check\nvocab_size: 256\ndim: 512\nn_layers: 4\nn_heads: 8\nn_kv_heads: 8\n"
          "ffn_dim: 1376\nmax_seq_len: 256\n");
    write("small.yaml",
          "name: plan-baseline\nvocab_size: 256\ndim: 16\nn_layers: 1\nn_heads: 2\nn_kv_heads: 2\n"
          "ffn_dim: 32\nmax_seq_len: 256\n");
    for (const char* m : {"big", "small"})
      write(std::string("train_") + m + ".yaml",
            std::string("model: ") + m + ".yaml\ndata:\n  path: corpus.txt\n  format: bytes\n"
            "train:\n  steps: 2\n  batch_size: 4\n  seq_len: 256\n  log_every: 1\n  threads: 1\n");
  }
  // Peak RSS in bytes of `lethe train` (two steps: every buffer and both moments are written).
  double train_peak(const std::string& model, const std::string& recompute) {
    const Outcome r = lethe({"train", (dir_ / ("train_" + model + ".yaml")).string(), "train.recompute=" + recompute});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("step     2/2"), std::string::npos) << r.out;
    return double(r.max_rss_kb) * 1024;
  }
  double planned(const std::string& recompute) {
    const Outcome r = lethe({"plan", (dir_ / "big.yaml").string(), "--precision", "f32", "--batch", "4", "--seq", "256",
                         "--recompute", recompute, "--json"});
    EXPECT_EQ(r.code, 0) << r.err;
    return nlohmann::json::parse(r.out)["bytes"]["total"].get<double>();
  }
};

TEST_F(PlanMemory, F32PlanMatchesMeasuredPeakRss) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's shadow memory and quarantine change peak RSS; the plan is checked in the "
                  "normal build";
#endif
  const double baseline = train_peak("small", "false");
  EXPECT_LT(baseline, 64.0 * (1 << 20));  // the baseline is small next to the model
  struct Case {
    const char* train_key;
    const char* plan_key;
  };
  for (const Case c : {Case{"false", "none"}, Case{"true", "all"}, Case{"2", "2"}}) {
    const double measured = train_peak("big", c.train_key) - baseline, plan = planned(c.plan_key);
    EXPECT_GT(plan, 10 * baseline);  // model memory dominates
    EXPECT_NEAR(plan / measured, 1.0, 0.15) << "recompute " << c.train_key << ": planned " << plan / (1 << 20)
                                            << " MiB, measured " << measured / (1 << 20) << " MiB above a "
                                            << baseline / (1 << 20) << " MiB baseline";
    std::printf("recompute %-5s planned %8.1f MiB, measured %8.1f MiB (peak RSS minus %.1f MiB baseline)\n",
                c.train_key, plan / (1 << 20), measured / (1 << 20), baseline / (1 << 20));
  }
}


// The bf16 plan against the device path's allocations: `lethe train` on the host-staged
// device (the device path's buffers in host memory, every one through the caching
// allocator) reports its peak of the bytes its tensors asked for, which is what the plan
// counts, buffer by buffer: weights bf16, gradients, master and moments fp32, and the
// activations of kept, recomputed and scratch layers. What the plan leaves out is O(B*T)
// bytes (token ids, per-row statistics, about 20 KiB here) against 205-305 MiB, so the two
// must agree within 0.5%; a missed [B*T, ffn_dim] bf16 buffer (2.7 MiB, 0.9%) fails it.
TEST_F(PlanMemory, Bf16PlanMatchesTheDevicePathsAllocations) {
  struct Case {
    const char* train_key;
    const char* plan_key;
  };
  for (const Case c : {Case{"false", "none"}, Case{"true", "all"}, Case{"2", "2"}}) {
    const Outcome r = lethe({"train", (dir_ / "train_big.yaml").string(), "train.device=cuda", "train.steps=1",
                             std::string("train.recompute=") + c.train_key},
                            {"LETHE_TEST_HOST_STAGED_DEVICE=1"});
    ASSERT_EQ(r.code, 0) << r.err;
    const size_t at = r.out.find("device memory, training: peak ");
    ASSERT_NE(at, std::string::npos) << r.out;
    double mib = 0;
    ASSERT_EQ(std::sscanf(r.out.c_str() + at, "device memory, training: peak %lf MiB", &mib), 1) << r.out;
    const Outcome p = lethe({"plan", (dir_ / "big.yaml").string(), "--precision", "bf16", "--batch", "4", "--seq",
                             "256", "--recompute", c.plan_key, "--json"});
    ASSERT_EQ(p.code, 0) << p.err;
    const nlohmann::json j = nlohmann::json::parse(p.out);
    const double plan = j["bytes"]["total"].get<double>() / double(1 << 20);
    EXPECT_NEAR(mib / plan, 1.0, 0.005) << "recompute " << c.train_key << ": planned " << plan
                                        << " MiB, the device path asked for " << mib << " MiB";
    std::printf("bf16, recompute %-5s planned %8.2f MiB, device path %8.1f MiB\n", c.train_key, plan, mib);
  }
}


// lethe unlearn on the host-staged device, on the embedded tiny-lm pair (0.8M parameters,
// batch 8 x 64 tokens, the evaluation's batch too): over the training steps the device
// path's tensors match the recipe's plan, a frozen reference included (GA+KL's logits, RMU's
// hidden state at a layer), within 5%: the allocations are deterministic (no BLAS or
// machine dependence), and 5% is below a missed layer working set (1.8 MiB, 7%) or a
// missed copy of the weights. The final evaluation holds the unlearned model's and one
// other model's bf16 weights (2 x 1.5 MiB) and forward-only activations, below training's
// at this batch; so with the optimizer state and the gradients released it stays under the
// training peak by more than they take (grads 4, master 4, moments 8 bytes a parameter:
// 12.3 MiB), and would not with them still held.
TEST_F(PlanMemory, UnlearnOnADeviceMatchesItsPlanAndReleasesTrainingState) {
  for (const char* recipe : {"ga_gd", "ga_kl", "rmu"}) {
    const std::string path = std::string(LETHE_SOURCE_DIR) + "/configs/recipes/" + recipe + ".yaml";
    const Outcome r = lethe({"unlearn", path, "output.dir=" + (dir_ / recipe).string(), "train.device=cuda",
                             "train.steps=2", "train.batch_size=8", "data.seq_len=64", "eval.every=0",
                             "eval.max_sequences=4", "eval.final_max_sequences=4", "eval.mia_max_docs=6",
                             "eval.verbatim_max_docs=1"},
                            {"LETHE_TEST_HOST_STAGED_DEVICE=1", "OMP_NUM_THREADS=1"});
    ASSERT_EQ(r.code, 0) << recipe << ": " << r.err;
    double train = 0, plan = 0, ratio = 0, final = 0;
    const size_t t = r.out.find("device memory, training: peak ");
    const size_t f = r.out.find("device memory, final evaluation: peak ");
    ASSERT_NE(t, std::string::npos) << r.out;
    ASSERT_NE(f, std::string::npos) << r.out;
    ASSERT_EQ(std::sscanf(r.out.c_str() + t,
                          "device memory, training: peak %lf MiB in lethe's tensors (plan %lf MiB, measured/plan %lf)",
                          &train, &plan, &ratio),
              3)
        << r.out;
    ASSERT_EQ(std::sscanf(r.out.c_str() + f, "device memory, final evaluation: peak %lf MiB", &final), 1) << r.out;
    EXPECT_NEAR(ratio, 1.0, 0.05) << recipe << ": planned " << plan << " MiB, the device path asked for " << train;
    const double states = 16.0 * 803968 / double(1 << 20);  // tiny-lm's parameters (data/models/tiny-lm-full)
    EXPECT_LT(final, train - states) << recipe;
    std::printf("unlearn %-6s training %6.1f MiB (plan %6.1f, x%.3f), final evaluation %6.1f MiB\n", recipe, train,
                plan, ratio, final);
  }
}

}  // namespace
