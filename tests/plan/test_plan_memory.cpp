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

}  // namespace
