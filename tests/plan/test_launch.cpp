// launch/: lethe-run.sh argument handling (checked through --dry-run and a stand-in
// mpirun), the real single-process path, the per-rank GPU shim and the SLURM script.
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "engine/core/error.h"
#include "engine/unlearn/progress.h"
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
    for (const char* k : {"OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "CUDA_VISIBLE_DEVICES", "LETHE_PROGRESS",
                          "LD_LIBRARY_PATH"})
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

TEST_F(Launch, ThreadsArePinnedOnlyWhereARankOwnsItsCores) {
  // One process, or ranks that mpirun binds to cores of their own: pinned.
  Outcome r = script({"--dry-run", "--dp", "2", "--", "version"}, {"LETHE_CORES=4"});
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=2 OMP_PROC_BIND=close OMP_PLACES=cores ", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, "--bind-to core -x OMP_NUM_THREADS -x OMP_PROC_BIND -x OMP_PLACES ")) << r.out;
  // Unbound ranks all see every core: pinning would stack their threads on the first ones.
  for (const auto& args : std::vector<std::vector<std::string>>{{"--dry-run", "--dp", "4", "--", "version"},
                                                                 {"--dry-run", "--dp", "2", "--threads", "2", "--",
                                                                  "version"},
                                                                 {"--dry-run", "--hostfile", "hosts", "--dp", "2",
                                                                  "--", "version"}}) {
    r = script(args, {"LETHE_CORES=2"});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(contains(r.out, "--bind-to none")) << r.out;
    EXPECT_FALSE(contains(r.out, "OMP_PROC_BIND")) << r.out;
    EXPECT_FALSE(contains(r.out, "OMP_PLACES")) << r.out;
  }
  // The user's choice wins and is forwarded.
  r = script({"--dry-run", "--dp", "4", "--", "version"}, {"LETHE_CORES=2", "OMP_PROC_BIND=spread"});
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=1 OMP_PROC_BIND=spread ", 0), 0u) << r.out;
  EXPECT_TRUE(contains(r.out, " -x OMP_PROC_BIND ")) << r.out;
  EXPECT_FALSE(contains(r.out, "OMP_PLACES")) << r.out;
  r = script({"--dry-run", "--", "version"}, {"LETHE_CORES=2", "OMP_PROC_BIND=false"});
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=2 OMP_PROC_BIND=false " + std::string(LETHE_BIN), 0), 0u) << r.out;
}

TEST_F(Launch, HostfileForwardsTheEnvironmentThatIsSet) {
  Outcome r = script({"--dry-run", "--hostfile", "hosts", "--dp", "2", "--", "version"},
                     {"LETHE_CORES=2", "NCCL_SOCKET_IFNAME=ib0", "LETHE_NCCL_TIMEOUT_S=30"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, " --bind-to none --hostfile hosts ")) << r.out;
  for (const char* x : {" -x OMP_NUM_THREADS ", " -x LETHE_PROGRESS ", " -x LETHE_BIN ", " -x LETHE_NCCL_TIMEOUT_S ",
                        " -x NCCL_SOCKET_IFNAME ", " -x PATH "})
    EXPECT_TRUE(contains(r.out, x)) << x << "\n" << r.out;
  EXPECT_FALSE(contains(r.out, "LD_LIBRARY_PATH")) << r.out;  // unset: Open MPI would warn
  // Each name once, however many rules select it.
  EXPECT_EQ(r.out.find(" -x OMP_NUM_THREADS "), r.out.rfind(" -x OMP_NUM_THREADS ")) << r.out;
  r = script({"--dry-run", "--hostfile", "hosts", "--dp", "2", "--", "version"},
             {"LETHE_CORES=2", "LD_LIBRARY_PATH=/opt/lethe/lib"});
  EXPECT_TRUE(contains(r.out, " -x LD_LIBRARY_PATH ")) << r.out;
  // One machine: the ranks inherit mpirun's environment, only the launch settings go by -x.
  r = script({"--dry-run", "--dp", "2", "--", "version"}, {"LETHE_CORES=2", "NCCL_SOCKET_IFNAME=ib0"});
  EXPECT_FALSE(contains(r.out, "-x PATH")) << r.out;
  EXPECT_FALSE(contains(r.out, "-x NCCL_SOCKET_IFNAME")) << r.out;
}

TEST_F(Launch, AllowRunAsRootExactlyForRoot) {
  fs::create_directories(dir_ / "bin");
  const std::string id = write("bin/id", "#!/bin/sh\necho \"$LETHE_TEST_UID\"\n");
  fs::permissions(id, fs::perms::owner_all);
  const std::string path = "PATH=" + (dir_ / "bin").string() + ":" + std::getenv("PATH");
  Outcome r = script({"--dry-run", "--dp", "2", "--", "version"}, {"LETHE_CORES=2", path, "LETHE_TEST_UID=0"});
  EXPECT_TRUE(contains(r.out, "mpirun -np 2 --allow-run-as-root ")) << r.out;
  r = script({"--dry-run", "--dp", "2", "--", "version"}, {"LETHE_CORES=2", path, "LETHE_TEST_UID=1000"});
  EXPECT_TRUE(contains(r.out, "mpirun -np 2 --map-by ")) << r.out;
  EXPECT_FALSE(contains(r.out, "--allow-run-as-root")) << r.out;
}

TEST_F(Launch, ProgressBarFollowsMpirunsOutputNotTheRanks) {
  // Ranks under Open MPI write to pseudo-terminals: the script decides from its own stdout
  // (a file here), and the user's setting wins.
  Outcome r = script({"--dry-run", "--dp", "2", "--", "version"}, {"LETHE_CORES=2"});
  EXPECT_TRUE(contains(r.out, " LETHE_PROGRESS=0 ")) << r.out;
  EXPECT_TRUE(contains(r.out, " -x LETHE_PROGRESS ")) << r.out;
  r = script({"--dry-run", "--dp", "2", "--", "version"}, {"LETHE_CORES=2", "LETHE_PROGRESS=1"});
  EXPECT_FALSE(contains(r.out, "LETHE_PROGRESS=0")) << r.out;
  // One process decides for itself (isatty on its own stdout).
  r = script({"--dry-run", "--", "version"}, {"LETHE_CORES=2"});
  EXPECT_FALSE(contains(r.out, "LETHE_PROGRESS")) << r.out;
}

// LETHE_PROGRESS beats isatty; unset or "auto" leaves it to isatty; anything else is refused.
TEST(Progress, EnvironmentSwitch) {
  const char* saved = std::getenv("LETHE_PROGRESS");
  const std::string keep = saved ? saved : "";
  ::unsetenv("LETHE_PROGRESS");
  EXPECT_TRUE(lethe::progress_bar_wanted(true));
  EXPECT_FALSE(lethe::progress_bar_wanted(false));
  ::setenv("LETHE_PROGRESS", "auto", 1);
  EXPECT_TRUE(lethe::progress_bar_wanted(true));
  EXPECT_FALSE(lethe::progress_bar_wanted(false));
  ::setenv("LETHE_PROGRESS", "0", 1);
  EXPECT_FALSE(lethe::progress_bar_wanted(true));
  ::setenv("LETHE_PROGRESS", "1", 1);
  EXPECT_TRUE(lethe::progress_bar_wanted(false));
  ::setenv("LETHE_PROGRESS", "yes", 1);
  try {
    lethe::progress_bar_wanted(true);
    ADD_FAILURE() << "LETHE_PROGRESS=yes was accepted";
  } catch (const lethe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("LETHE_PROGRESS must be 0, 1 or auto, got 'yes'"), std::string::npos)
        << e.what();
  }
  if (saved) ::setenv("LETHE_PROGRESS", keep.c_str(), 1);
  else ::unsetenv("LETHE_PROGRESS");
}

TEST_F(Launch, UnlearnReadsTheProgressSwitch) {
  // The switch is read before the recipe: a bad value is named even for a missing recipe.
  const Outcome r = lethe::test::run_argv({LETHE_BIN, "unlearn", (dir_ / "none.yaml").string()}, dir_,
                                          {"LETHE_PROGRESS=on"});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.err, "LETHE_PROGRESS must be 0, 1 or auto, got 'on'")) << r.err;
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

// The SLURM script under a simulated allocation, with stand-ins for the commands it asks
// (scontrol for the task plugin, sinfo for node sizes, id for root) in front of PATH.
class Slurm : public Launch {
 protected:
  const std::string sb = kRoot + "/launch/slurm/lethe.sbatch";
  std::vector<std::string> job{"SLURM_NTASKS=16", "SLURM_JOB_NUM_NODES=2", "SLURM_TASKS_PER_NODE=8(x2)",
                               "SLURM_CPUS_PER_TASK=12", "SLURM_SUBMIT_DIR=" + kRoot,
                               "LETHE_BIN=" + std::string(LETHE_BIN)};
  void SetUp() override {
    Launch::SetUp();
    fs::create_directories(dir_ / "bin");
    task_plugin("task/affinity,task/cgroup");
  }
  void stand_in(const std::string& name, const std::string& body) {
    const std::string p = write("bin/" + name, "#!/bin/sh\n" + body);
    fs::permissions(p, fs::perms::owner_all);
  }
  void task_plugin(const std::string& plugins) {
    stand_in("scontrol", plugins.empty() ? "exit 1\n"
                                         : "echo 'SLURM_VERSION           = 22.05.8'\n"
                                           "echo 'TaskPlugin              = " + plugins + "'\n"
                                           "echo 'TaskPluginParam         = (null type)'\n");
  }
  Outcome sbatch(const std::vector<std::string>& args, std::vector<std::string> env) {
    std::vector<std::string> argv{"bash", sb};
    argv.insert(argv.end(), args.begin(), args.end());
    const char* path = std::getenv("PATH");
    env.push_back("PATH=" + (dir_ / "bin").string() + ":" + (path ? path : "/usr/bin:/bin"));
    for (const char* k : {"OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "LETHE_PROGRESS", "LETHE_LAUNCHER",
                          "LETHE_GPU_BIND", "LETHE_DEBUG", "LD_LIBRARY_PATH", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES"})
      if (!has(env, k)) env.push_back(k);
    for (const char* k : {"SLURM_NTASKS", "SLURM_JOB_NUM_NODES", "SLURM_TASKS_PER_NODE", "SLURM_CPUS_PER_TASK"})
      if (!has(env, k)) env.push_back(k);
    return lethe::test::run_argv(argv, dir_, env);
  }
  std::vector<std::string> with(std::vector<std::string> env, const std::vector<std::string>& more) {
    env.insert(env.end(), more.begin(), more.end());
    return env;
  }
  // The launch line without the environment assignments printed before it.
  static std::string launch_line(const std::string& out) {
    for (const char* l : {"srun ", "mpirun "}) {
      const size_t p = out.find(l);
      if (p != std::string::npos) return out.substr(p);
    }
    return out;
  }
};

TEST_F(Slurm, SplitsRanksIntoTpInsideNodes) {
  Outcome r = sbatch({"--tp", "8", "--dry-run", "--", "train", "c.yaml"}, job);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(launch_line(r.out).rfind("srun --mpi=pmix --ntasks=16 --ntasks-per-node=8 --cpus-per-task=12 "
                                     "--cpu-bind=cores --kill-on-bad-exit=1 ",
                                     0),
            0u)
      << r.out;
  EXPECT_TRUE(contains(r.out, "rank-gpu.sh " + std::string(LETHE_BIN) + " train c.yaml parallel.tp=8 parallel.dp=2"))
      << r.out;
  EXPECT_TRUE(contains(r.err, "16 ranks = tp 8 x dp 2, 12 threads per rank")) << r.err;

  r = sbatch({"--dry-run", "--", "unlearn", "r.yaml"}, with(job, {"LETHE_LAUNCHER=mpirun"}));
  EXPECT_TRUE(contains(r.out, "mpirun -np 16 ")) << r.out;
  EXPECT_TRUE(contains(r.out, " --map-by ppr:8:node:PE=12 --bind-to core ")) << r.out;
  EXPECT_TRUE(contains(r.out, "unlearn r.yaml parallel.tp=8 parallel.dp=2")) << r.out;  // tp defaults to GPUs/node

  r = sbatch({"--tp", "4", "--dry-run", "--", "train", "c.yaml"}, with(job, {"LETHE_GPU_BIND=slurm"}));
  EXPECT_TRUE(contains(r.out, "--gpus-per-task=1 --gpu-bind=single:1 " + std::string(LETHE_BIN))) << r.out;

  r = sbatch({"--tp", "16", "--dry-run", "--", "train", "c.yaml"}, job);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "tp=16 does not divide the 8 ranks on a node")) << r.err;
  r = sbatch({"--tp", "4", "--dp", "2", "--dry-run", "--", "train", "c.yaml"}, job);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "dp=2 but 16 ranks / tp=4 = 4")) << r.err;
  r = sbatch({"--", "version"}, {});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "not inside a SLURM allocation: submit with sbatch, or preview with --dry-run")) << r.err;
  // SLURM_NTASKS_PER_NODE (set only when the user asked for it) when the job's list is absent.
  r = sbatch({"--dry-run", "--", "train", "c.yaml"},
             {"SLURM_NTASKS=16", "SLURM_JOB_NUM_NODES=2", "SLURM_NTASKS_PER_NODE=8", "SLURM_CPUS_PER_TASK=12",
              "LETHE_BIN=" + std::string(LETHE_BIN)});
  EXPECT_TRUE(contains(r.out, "parallel.tp=8 parallel.dp=2")) << r.out << r.err;
}

TEST_F(Slurm, UnevenTasksPerNode) {
  // 8 ranks on one node, 4 on the other: tp must divide both; the default is their gcd.
  auto uneven = with(job, {"SLURM_NTASKS=12", "SLURM_TASKS_PER_NODE=8,4", "SLURM_CPUS_PER_TASK=2"});
  Outcome r = sbatch({"--dry-run", "--", "unlearn", "r.yaml"}, uneven);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "unlearn r.yaml parallel.tp=4 parallel.dp=3")) << r.out;
  // srun keeps the job's own layout: no --ntasks-per-node that one of the nodes lacks.
  EXPECT_EQ(launch_line(r.out).rfind("srun --mpi=pmix --ntasks=12 --cpus-per-task=2 --cpu-bind=cores ", 0), 0u)
      << r.out;
  EXPECT_TRUE(contains(r.err, "2 node(s) (8,4 tasks), 12 ranks = tp 4 x dp 3")) << r.err;
  r = sbatch({"--tp", "8", "--dry-run", "--", "unlearn", "r.yaml"}, uneven);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "tp=8 does not divide the 4 ranks on a node (8,4 tasks per node)")) << r.err;
  // mpirun cannot say "8 here, 4 there" with ppr: the allocation's slots place the ranks.
  r = sbatch({"--dry-run", "--", "unlearn", "r.yaml"}, with(uneven, {"LETHE_LAUNCHER=mpirun"}));
  EXPECT_TRUE(contains(r.out, " --map-by slot:PE=2 --bind-to core ")) << r.out;
  EXPECT_FALSE(contains(r.out, "ppr:")) << r.out;

  // SLURM's compressed form: 4 on each of two nodes, then 2.
  r = sbatch({"--dry-run", "--", "train", "c.yaml"},
             with(job, {"SLURM_NTASKS=10", "SLURM_JOB_NUM_NODES=3", "SLURM_TASKS_PER_NODE=4(x2),2"}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "train c.yaml parallel.tp=2 parallel.dp=5")) << r.out;
  r = sbatch({"--tp", "4", "--dry-run", "--", "train", "c.yaml"},
             with(job, {"SLURM_NTASKS=10", "SLURM_JOB_NUM_NODES=3", "SLURM_TASKS_PER_NODE=4(x2),2"}));
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "tp=4 does not divide the 2 ranks on a node (4(x2),2 tasks per node)")) << r.err;

  r = sbatch({"--dry-run", "--", "train", "c.yaml"}, with(job, {"SLURM_TASKS_PER_NODE=8,4"}));
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "the tasks per node '8,4' add up to 12, not the job's 16 ranks")) << r.err;
  r = sbatch({"--dry-run", "--", "train", "c.yaml"}, with(job, {"SLURM_TASKS_PER_NODE=8;8"}));
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "cannot read the tasks per node '8;8'")) << r.err;
}

TEST_F(Slurm, ThreadsArePinnedOnlyWhenTheLauncherBindsRanks) {
  // task/affinity: srun binds each rank to its cores, so its threads may be pinned.
  Outcome r = sbatch({"--tp", "2", "--dry-run", "--", "train", "c.yaml"}, job);
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=12 OMP_PROC_BIND=close OMP_PLACES=cores LETHE_PROGRESS=0 srun ", 0), 0u)
      << r.out;
  EXPECT_TRUE(contains(r.out, " --cpu-bind=cores ")) << r.out;

  // No task plugin that binds: every rank sees every core, and pinning would put all of
  // them on the first ones. No binding asked of srun either (it would only warn).
  task_plugin("task/none");
  r = sbatch({"--tp", "2", "--dry-run", "--", "train", "c.yaml"}, job);
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=12 LETHE_PROGRESS=0 srun ", 0), 0u) << r.out;
  EXPECT_FALSE(contains(r.out, "OMP_PROC_BIND")) << r.out;
  EXPECT_FALSE(contains(r.out, "--cpu-bind")) << r.out;
  EXPECT_TRUE(contains(r.err, "threads not pinned (TaskPlugin=task/none: srun does not bind ranks to cores)"))
      << r.err;
  task_plugin("task/cgroup");  // confines the job, binds no rank
  r = sbatch({"--tp", "2", "--dry-run", "--", "train", "c.yaml"}, job);
  EXPECT_FALSE(contains(r.out, "OMP_PROC_BIND")) << r.out;
  task_plugin("");  // no controller answers
  r = sbatch({"--tp", "2", "--dry-run", "--", "train", "c.yaml"}, job);
  EXPECT_FALSE(contains(r.out, "OMP_PROC_BIND")) << r.out;
  EXPECT_TRUE(contains(r.err, "threads not pinned (no controller answered")) << r.err;

  // The user's own settings win, whichever way.
  task_plugin("task/none");
  r = sbatch({"--tp", "2", "--dry-run", "--", "train", "c.yaml"},
             with(job, {"OMP_PROC_BIND=spread", "OMP_PLACES=threads"}));
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=12 OMP_PROC_BIND=spread OMP_PLACES=threads LETHE_PROGRESS=0 srun ", 0), 0u)
      << r.out;
  EXPECT_TRUE(contains(r.err, "OMP_PROC_BIND=spread from the environment")) << r.err;
  task_plugin("task/affinity");
  r = sbatch({"--tp", "2", "--dry-run", "--", "train", "c.yaml"}, with(job, {"OMP_PROC_BIND=false"}));
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=12 OMP_PROC_BIND=false LETHE_PROGRESS=0 srun ", 0), 0u) << r.out;

  // mpirun binds its ranks itself, whatever SLURM's plugins.
  task_plugin("task/none");
  r = sbatch({"--tp", "2", "--dry-run", "--", "train", "c.yaml"}, with(job, {"LETHE_LAUNCHER=mpirun"}));
  EXPECT_EQ(r.out.rfind("OMP_NUM_THREADS=12 OMP_PROC_BIND=close OMP_PLACES=cores LETHE_PROGRESS=0 mpirun ", 0), 0u)
      << r.out;
}

TEST_F(Slurm, MpirunFlagsRootAndForwardedEnvironment) {
  auto env = with(job, {"LETHE_LAUNCHER=mpirun", "NCCL_DEBUG=INFO", "LETHE_NCCL_TIMEOUT_S=60"});
  // As root Open MPI refuses to start without --allow-run-as-root; as anyone else the flag
  // is not wanted. `id` decides, so a stand-in plays each.
  stand_in("id", "echo 0\n");
  Outcome r = sbatch({"--dry-run", "--", "train", "c.yaml"}, env);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(launch_line(r.out).rfind("mpirun -np 16 --allow-run-as-root --map-by ppr:8:node:PE=12 --bind-to core ", 0),
            0u)
      << r.out;
  stand_in("id", "echo 1000\n");
  r = sbatch({"--dry-run", "--", "train", "c.yaml"}, env);
  EXPECT_EQ(launch_line(r.out).rfind("mpirun -np 16 --map-by ppr:8:node:PE=12 --bind-to core ", 0), 0u) << r.out;

  // Only variables that are set (Open MPI warns once per job about each unset one).
  for (const char* x : {" -x LETHE_BIN ", " -x LETHE_NCCL_TIMEOUT_S ", " -x LETHE_PROGRESS ", " -x NCCL_DEBUG ",
                        " -x OMP_NUM_THREADS ", " -x OMP_PLACES ", " -x OMP_PROC_BIND ", " -x PATH "})
    EXPECT_TRUE(contains(r.out, x)) << x << "\n" << r.out;
  EXPECT_FALSE(contains(r.out, "LD_LIBRARY_PATH")) << r.out;
  EXPECT_FALSE(contains(r.out, "CUDA_LAUNCH_BLOCKING")) << r.out;
  r = sbatch({"--debug", "--dry-run", "--", "train", "c.yaml"}, with(env, {"LD_LIBRARY_PATH=/opt/x/lib"}));
  for (const char* x : {" -x LD_LIBRARY_PATH ", " -x LETHE_DEBUG ", " -x CUDA_LAUNCH_BLOCKING "})
    EXPECT_TRUE(contains(r.out, x)) << x << "\n" << r.out;
  EXPECT_TRUE(contains(r.out, "LETHE_DEBUG=1 CUDA_LAUNCH_BLOCKING=1 mpirun ")) << r.out;
}

TEST_F(Slurm, ProgressBarIsOffInTheLogUnlessAsked) {
  Outcome r = sbatch({"--dry-run", "--", "unlearn", "r.yaml"}, job);
  EXPECT_TRUE(contains(r.out, " LETHE_PROGRESS=0 srun ")) << r.out;
  r = sbatch({"--dry-run", "--", "unlearn", "r.yaml"}, with(job, {"LETHE_PROGRESS=1"}));
  EXPECT_TRUE(contains(r.out, " LETHE_PROGRESS=1 srun ")) << r.out;
  // Not only printed: the launcher really gets it (a stand-in srun shows its environment).
  stand_in("srun", "echo \"srun LETHE_PROGRESS=$LETHE_PROGRESS OMP_NUM_THREADS=$OMP_NUM_THREADS\"\n");
  r = sbatch({"--", "version"}, job);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "srun LETHE_PROGRESS=0 OMP_NUM_THREADS=12\n");
}

TEST_F(Slurm, DryRunOutsideAnAllocationPreviewsTheJob) {
  // No SLURM_NTASKS: the sizes come from the script's #SBATCH lines.
  stand_in("sinfo", "exit 1\n");
  Outcome r = sbatch({"--tp", "2", "--dry-run", "--", "unlearn", "r.yaml"}, {"LETHE_BIN=" + std::string(LETHE_BIN)});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "srun --mpi=pmix --ntasks=8 --ntasks-per-node=8 --cpus-per-task=8 ")) << r.out;
  EXPECT_TRUE(contains(r.out, "unlearn r.yaml parallel.tp=2 parallel.dp=4")) << r.out;
  EXPECT_TRUE(contains(r.err, "submit with: sbatch --nodes=1 --ntasks-per-node=8 --cpus-per-task=8 "
                              "--gpus-per-node=8 launch/slurm/lethe.sbatch --tp 2 -- unlearn r.yaml"))
      << r.err;
  EXPECT_FALSE(contains(r.err, "warning")) << r.err;  // nothing to check against

  // sbatch's size flags preview another shape; a controller that answers is asked whether
  // the shape fits (a 2-CPU node without GPU GRES here).
  stand_in("sinfo", "case \"$*\" in *%c*) echo 2 ;; *%G*) echo '(null)' ;; esac\n");
  r = sbatch({"--dry-run", "--tp", "2", "--", "unlearn", "r.yaml"}, {"LETHE_BIN=" + std::string(LETHE_BIN)});
  EXPECT_TRUE(contains(r.err, "warning: 64 CPUs per node asked (8 tasks x 8), but the largest node has 2")) << r.err;
  EXPECT_TRUE(contains(r.err, "warning: no node has GPU GRES, so sbatch refuses --gpus-per-node=8; add "
                              "--gpus-per-node=0"))
      << r.err;
  r = sbatch({"--dry-run", "--gpus-per-node=0", "--ntasks-per-node", "2", "--cpus-per-task=1", "--nodes=1", "--tp",
              "2", "--", "unlearn", "r.yaml"},
             {"LETHE_BIN=" + std::string(LETHE_BIN)});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "OMP_NUM_THREADS=1 OMP_PROC_BIND=close OMP_PLACES=cores LETHE_PROGRESS=0 srun --mpi=pmix "
                   "--ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --cpu-bind=cores --kill-on-bad-exit=1 " +
                       kRoot + "/launch/rank-gpu.sh " + LETHE_BIN + " unlearn r.yaml parallel.tp=2 parallel.dp=1 \n");
  EXPECT_FALSE(contains(r.err, "warning")) << r.err;
  EXPECT_TRUE(contains(r.err, "submit with: sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 "))
      << r.err;

  r = sbatch({"--dry-run", "--cpus-per-task=x", "--", "version"}, {});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "--cpus-per-task must be a number, got 'x'")) << r.err;
  // Inside a job the allocation is fixed: the flags belong before the script name.
  r = sbatch({"--ntasks-per-node=2", "--", "version"}, job);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "to size a job put them before it")) << r.err;
}

TEST_F(Slurm, FindsTheRepositoryFromTheSubmittedPath) {
  // sbatch runs a spooled copy: the repository comes from the path the job was submitted
  // with (relative to the submit directory), not from where the copy lies.
  fs::create_directories(dir_ / "elsewhere");
  const std::string rel = fs::relative(kRoot, dir_ / "elsewhere").string() + "/launch/slurm/lethe.sbatch";
  stand_in("scontrol", "[ \"$2\" = job ] && echo '   Command=" + rel + "' && exit 0\n"
                       "echo 'TaskPlugin              = task/affinity'\n");
  auto env = with(job, {"SLURM_JOB_ID=7", "SLURM_SUBMIT_DIR=" + (dir_ / "elsewhere").string(), "LETHE_BIN"});
  Outcome r = sbatch({"--dry-run", "--", "version"}, env);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string root = fs::canonical(kRoot).string();
  EXPECT_TRUE(contains(r.out, " " + root + "/launch/rank-gpu.sh " + root + "/build/lethe version")) << r.out;
  // Nothing to go by: a clear error instead of a rank that cannot find the shim.
  task_plugin("task/affinity");
  env = with(job, {"SLURM_JOB_ID=7", "SLURM_SUBMIT_DIR=" + (dir_ / "elsewhere").string(),
                   "LETHE_ROOT=" + (dir_ / "elsewhere").string()});
  r = sbatch({"--", "version"}, env);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "no launch/rank-gpu.sh under " + (dir_ / "elsewhere").string() +
                                  ": submit from the repository root, or set LETHE_ROOT to it"))
      << r.err;
}

TEST_F(Slurm, TheTimeLimitSignalReachesTheRanks) {
  // SIGUSR1 before the limit, to the batch shell; the script execs the launcher, which
  // passes SIGUSR1 on to every rank (SIGTERM would make srun kill them).
  const std::string text = lethe::test::slurp(sb);
  EXPECT_TRUE(contains(text, "\n#SBATCH --signal=B:USR1@300\n")) << "the --signal line changed";
  stand_in("srun", "echo \"srun pid $$\"\n");
  const Outcome r = lethe::test::run_argv(
      {"bash", "-c", "echo \"script pid $$\"; exec bash \"$0\" -- version", sb}, dir_,
      with(job, {"PATH=" + (dir_ / "bin").string() + ":" + std::getenv("PATH")}));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto pid_after = [&](const std::string& what) {
    const size_t p = r.out.find(what);
    return p == std::string::npos ? std::string("?") : r.out.substr(p + what.size(), r.out.find('\n', p) - p - what.size());
  };
  EXPECT_EQ(pid_after("script pid "), pid_after("srun pid ")) << r.out;  // the launcher is the batch shell
}

}  // namespace
