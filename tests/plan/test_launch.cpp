// launch/: lethe-run.sh argument handling (checked through --dry-run and a stand-in
// mpirun), the real single-process path, the per-rank GPU shim and the SLURM script.
#include <unistd.h>

#include <string>

#include "tests/plan/run_util.h"

namespace {
using lethe::test::Outcome;
namespace fs = std::filesystem;

const std::string kRoot = LETHE_SOURCE_DIR;
const std::string kRun = kRoot + "/launch/lethe-run.sh";

class Launch : public lethe::test::TempDirTest {
 protected:
  // An mpirun that says it is Open MPI and prints what it was asked to run.
  std::string fake_mpirun() {
    const std::string p = write("mpirun",
                                "#!/bin/sh\n"
                                "if [ \"$1\" = --version ]; then echo 'mpirun (Open MPI) 4.1.4'; exit 0; fi\n"
                                "echo \"fake-mpirun OMP_NUM_THREADS=$OMP_NUM_THREADS $*\"\n");
    fs::permissions(p, fs::perms::owner_all);
    return p;
  }
  Outcome script(const std::vector<std::string>& args, std::vector<std::string> env = {}) {
    std::vector<std::string> argv{"bash", kRun};
    argv.insert(argv.end(), args.begin(), args.end());
    env.push_back("LETHE_BIN=" + std::string(LETHE_BIN));
    env.push_back("MPIRUN=" + fake_mpirun());
    for (const char* k : {"OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "CUDA_VISIBLE_DEVICES"})
      if (!has(env, k)) env.push_back(k);  // the test runner's settings must not leak in
    return lethe::test::run_argv(argv, dir_, env);
  }
  static bool has(const std::vector<std::string>& env, const std::string& key) {
    for (const auto& e : env)
      if (e.rfind(key + "=", 0) == 0) return true;
    return false;
  }
  static bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
};

TEST_F(Launch, TpDpBecomeMpirunRanksAndOverrides) {
  const Outcome r = script({"--dry-run", "--tp", "2", "--dp", "2", "--", "train", "cfg.yaml", "train.steps=5"},
                       {"LETHE_CORES=16"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=4 ", 0), 0u) << r.out;  // 16 cores / 4 ranks
  EXPECT_TRUE(contains(r.out, "mpirun -np 4 ")) << r.out;
  EXPECT_TRUE(contains(r.out, "--map-by slot:PE=4 --bind-to core")) << r.out;
  EXPECT_FALSE(contains(r.out, "--oversubscribe")) << r.out;
  EXPECT_EQ(contains(r.out, "--allow-run-as-root"), ::geteuid() == 0) << r.out;
  EXPECT_TRUE(contains(r.out, "-x OMP_NUM_THREADS")) << r.out;
  const std::string tail = std::string(LETHE_BIN) + " train cfg.yaml train.steps=5 parallel.tp=2 parallel.dp=2\n";
  ASSERT_GE(r.out.size(), tail.size());
  EXPECT_EQ(r.out.substr(r.out.size() - tail.size()), tail) << r.out;
}

TEST_F(Launch, MoreRanksThanCoresOversubscribeWithOneThread) {
  const Outcome r = script({"--dry-run", "--dp", "4", "--", "unlearn", "r.yaml"}, {"LETHE_CORES=2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=1 ", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, "mpirun -np 4 ")) << r.out;
  EXPECT_TRUE(contains(r.out, "--oversubscribe --bind-to none")) << r.out;
  EXPECT_TRUE(contains(r.out, "unlearn r.yaml parallel.tp=1 parallel.dp=4")) << r.out;
}

TEST_F(Launch, OneRankRunsLetheDirectly) {
  Outcome r = script({"--dry-run", "--", "train", "cfg.yaml"}, {"LETHE_CORES=3"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "OMP_NUM_THREADS=3 OMP_PROC_BIND=close OMP_PLACES=cores " + std::string(LETHE_BIN) +
                       " train cfg.yaml\n");  // no mpirun, no grid overrides
  r = script({"--dry-run", "--threads", "2", "--", "version"}, {"LETHE_CORES=8", "OMP_NUM_THREADS=5"});
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=2 ", 0), 0u) << r.out;  // --threads beats the environment
  r = script({"--dry-run", "--", "version"}, {"LETHE_CORES=8", "OMP_NUM_THREADS=5"});
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=5 ", 0), 0u) << r.out;
}

TEST_F(Launch, OneRankReallyRunsVersion) {
  Outcome r = script({"--", "version"}, {"LETHE_CORES=1"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("lethe 0.", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, "1 threads")) << r.out;  // OMP_NUM_THREADS reached the process
  // The older single-process entry point goes through the same script.
  r = lethe::test::run_argv({"bash", kRoot + "/launch/lethe-local.sh", "version"}, dir_,
                            {"LETHE_BIN=" + std::string(LETHE_BIN), "OMP_NUM_THREADS=1"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("lethe 0.", 0), 0u) << r.out;
  r = lethe::test::run_argv({"bash", kRun, "--", "version"}, dir_, {"LETHE_BIN=" + (dir_ / "nope").string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "nope not found")) << r.err;
}

TEST_F(Launch, SeveralRanksExecMpirun) {
  const Outcome r = script({"--dp", "2", "--", "version"}, {"LETHE_CORES=4"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("fake-mpirun OMP_NUM_THREADS=2 -np 2 ", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, std::string(LETHE_BIN) + " version\n")) << r.out;  // version takes no overrides
}

TEST_F(Launch, RealMpirunStartsEveryRank) {
  if (std::system("command -v mpirun >/dev/null 2>&1") != 0) GTEST_SKIP() << "no mpirun installed";
  std::vector<std::string> env{"LETHE_BIN=" + std::string(LETHE_BIN), "OMP_NUM_THREADS", "LETHE_CORES=2"};
  const Outcome r = lethe::test::run_argv({"bash", kRun, "--dp", "2", "--", "version"}, dir_, env);
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  size_t n = 0;
  for (size_t p = r.out.find("lethe 0."); p != std::string::npos; p = r.out.find("lethe 0.", p + 1)) ++n;
  EXPECT_EQ(n, 2u) << r.out;
}

TEST_F(Launch, DebugSetsTheEngineContract) {
  Outcome r = script({"--dry-run", "--debug", "--", "train", "cfg.yaml"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, " LETHE_DEBUG=1 CUDA_LAUNCH_BLOCKING=1 CUDA_VISIBLE_DEVICES=0 ")) << r.out;
  r = script({"--dry-run", "--debug", "--", "version"}, {"CUDA_VISIBLE_DEVICES=3"});
  EXPECT_TRUE(contains(r.out, " CUDA_VISIBLE_DEVICES=3 ")) << r.out;  // a chosen GPU is kept
  r = script({"--dry-run", "--gpus", "--tp", "2", "--", "version"}, {"LETHE_CORES=2"});
  EXPECT_TRUE(contains(r.out, kRoot + "/launch/rank-gpu.sh " + LETHE_BIN + " version")) << r.out;
}

TEST_F(Launch, BadArgumentsAreRejected) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{{{"--tp", "0", "--", "version"}, "--tp must be a positive integer, got '0'"},
                                         {{"--dp", "x", "--", "version"}, "--dp must be a positive integer, got 'x'"},
                                         {{"--dp"}, "--dp needs a value"},
                                         {{"--tp", "2"}, "no lethe command given after --"},
                                         {{"--np", "2", "--", "version"}, "unknown option '--np'"}}) {
    const Outcome r = script(c.args);
    EXPECT_EQ(r.code, 2) << c.message;
    EXPECT_TRUE(contains(r.err, c.message)) << "want: " << c.message << "\ngot: " << r.err;
  }
  const Outcome h = script({"--help"});
  EXPECT_EQ(h.code, 0);
  EXPECT_TRUE(contains(h.out, "--dry-run")) << h.out;
}

TEST_F(Launch, RankGpuKeepsTheLocalRanksDevice) {
  const std::string shim = kRoot + "/launch/rank-gpu.sh";
  Outcome r = lethe::test::run_argv({"bash", shim, "printenv", "CUDA_VISIBLE_DEVICES"}, dir_,
                                {"OMPI_COMM_WORLD_LOCAL_RANK=1", "CUDA_VISIBLE_DEVICES=4,5,6"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "5\n");  // the second of the GPUs this job was given
  r = lethe::test::run_argv({"bash", shim, "printenv", "CUDA_VISIBLE_DEVICES"}, dir_,
                            {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID=3", "CUDA_VISIBLE_DEVICES"});
  EXPECT_EQ(r.out, "3\n");
  r = lethe::test::run_argv({"bash", shim, "true"}, dir_,
                            {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "no local rank")) << r.err;
}

TEST_F(Launch, SlurmScriptSplitsRanksIntoTpInsideNodes) {
  const std::string sb = kRoot + "/launch/slurm/lethe.sbatch";
  const std::vector<std::string> job{"SLURM_NTASKS=16", "SLURM_JOB_NUM_NODES=2", "SLURM_NTASKS_PER_NODE=8(x2)",
                                     "SLURM_CPUS_PER_TASK=12", "SLURM_SUBMIT_DIR=" + kRoot,
                                     "LETHE_BIN=" + std::string(LETHE_BIN)};
  Outcome r = lethe::test::run_argv({"bash", sb, "--tp", "8", "--dry-run", "--", "train", "c.yaml"}, dir_, job);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("srun --mpi=pmix --ntasks=16 --ntasks-per-node=8 --cpus-per-task=12 --cpu-bind=cores", 0), 0u)
      << r.out;
  EXPECT_TRUE(contains(r.out, "rank-gpu.sh " + std::string(LETHE_BIN) + " train c.yaml parallel.tp=8 parallel.dp=2"))
      << r.out;
  EXPECT_TRUE(contains(r.err, "16 ranks = tp 8 x dp 2, 12 threads per rank")) << r.err;

  auto env = job;
  env.push_back("LETHE_LAUNCHER=mpirun");
  r = lethe::test::run_argv({"bash", sb, "--dry-run", "--", "unlearn", "r.yaml"}, dir_, env);
  EXPECT_EQ(r.out.rfind("mpirun -np 16 --map-by ppr:8:node:PE=12 --bind-to core", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, "unlearn r.yaml parallel.tp=8 parallel.dp=2")) << r.out;  // tp defaults to GPUs/node

  env = job;
  env.push_back("LETHE_GPU_BIND=slurm");
  r = lethe::test::run_argv({"bash", sb, "--tp", "4", "--dry-run", "--", "train", "c.yaml"}, dir_, env);
  EXPECT_TRUE(contains(r.out, "--gpus-per-task=1 --gpu-bind=single:1 " + std::string(LETHE_BIN))) << r.out;

  r = lethe::test::run_argv({"bash", sb, "--tp", "16", "--dry-run", "--", "train", "c.yaml"}, dir_, job);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "tp=16 does not divide the 8 ranks per node")) << r.err;
  r = lethe::test::run_argv({"bash", sb, "--tp", "4", "--dp", "2", "--dry-run", "--", "train", "c.yaml"}, dir_, job);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "dp=2 but 16 ranks / tp=4 = 4")) << r.err;
  r = lethe::test::run_argv({"bash", sb, "--", "version"}, dir_, {"SLURM_NTASKS"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "not inside a SLURM allocation")) << r.err;
}

}  // namespace
