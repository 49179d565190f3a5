// The CPU path runs the best GEMM kernel the CPU supports, whatever OpenBLAS detected:
// on a VM that hides the CPU model (OpenBLAS then picks the SSE3 "Prescott" kernel on an
// AVX-512 machine, ~6x slower) lethe re-executes itself with OPENBLAS_CORETYPE set.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "kernels/cpu/blas_kernel.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

struct LetheRun {
  int code;
  std::string out, err;
};

// `lethe` with a clean BLAS environment plus `env`, as a user's shell would start it.
LetheRun run_lethe(const std::string& env, const std::string& args) {
  const fs::path dir = fs::temp_directory_path() / ("lethe_blas_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string cmd = "env -u OPENBLAS_CORETYPE -u LETHE_BLAS_SELECTED -u LETHE_BLAS_AUTO " + env + " " +
                          LETHE_BIN + " " + args + " >" + (dir / "out").string() + " 2>" + (dir / "err").string();
  const int status = std::system(cmd.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  LetheRun r{WIFEXITED(status) ? WEXITSTATUS(status) : 128, slurp(dir / "out"), slurp(dir / "err")};
  fs::remove_all(dir);
  return r;
}

bool user_forced_core() { return std::getenv("OPENBLAS_CORETYPE") && !std::getenv("LETHE_BLAS_SELECTED"); }

TEST(BlasKernel, CoreNamesMapToTheirIsa) {
  EXPECT_EQ(isa_level_of_core("Prescott"), 0);
  EXPECT_EQ(isa_level_of_core("NEHALEM"), 0);
  EXPECT_EQ(isa_level_of_core("Sandybridge"), 1);
  EXPECT_EQ(isa_level_of_core("haswell"), 2);
  EXPECT_EQ(isa_level_of_core("Zen"), 2);
  EXPECT_EQ(isa_level_of_core("SkylakeX"), 3);
  EXPECT_EQ(isa_level_of_core("SapphireRapids"), 3);
  EXPECT_EQ(isa_level_of_core("NoSuchCore"), -1);
  for (int l = 0; l <= 3; ++l) EXPECT_EQ(isa_level_of_core(core_for_isa_level(l)), l);
}

// This test binary's main() selected the kernel as `lethe` does.
TEST(BlasKernel, ThisProcessRunsTheBestKernelTheCpuSupports) {
  const BlasKernel k = blas_kernel();
  if (!k.dynamic) GTEST_SKIP() << "OpenBLAS built for one CPU (no DYNAMIC_ARCH): " << k.library;
  if (user_forced_core()) {
    EXPECT_STRCASEEQ(k.core.c_str(), std::getenv("OPENBLAS_CORETYPE")) << "the kernel asked for is not the one in use";
    return;
  }
  EXPECT_EQ(isa_level_of_core(k.core), cpu_isa_level())
      << "GEMM runs OpenBLAS's " << k.core << " kernel on a CPU that supports " << k.cpu_best << " (" << k.how << ")";
  EXPECT_FALSE(k.below_cpu);
}

TEST(BlasKernel, VersionNamesTheKernelAndItIsNotGeneric) {
  const LetheRun r = run_lethe("", "version");
  ASSERT_EQ(r.code, 0) << r.err;
  const BlasKernel k = blas_kernel();
  EXPECT_NE(r.out.find("BLAS: OpenBLAS"), std::string::npos) << r.out;
  if (!k.dynamic) return;
  // The child's kernel (chosen afresh: run_lethe passes no OPENBLAS_CORETYPE), named: one
  // of the CPU's own ISA level, not necessarily the level's canonical name (an AVX-512 BF16
  // CPU, Intel Cooper Lake or AMD Zen 4, runs Cooperlake where lethe would pick SkylakeX).
  const size_t at = r.out.find(", kernel ");
  ASSERT_NE(at, std::string::npos) << r.out;
  const size_t b = at + 9, e = r.out.find(" (", b);
  ASSERT_NE(e, std::string::npos) << r.out;
  const std::string used = r.out.substr(b, e - b);
  EXPECT_EQ(isa_level_of_core(used), cpu_isa_level()) << used << "\n" << r.out;
  EXPECT_EQ(r.out.find("WARNING"), std::string::npos) << r.out;
  if (cpu_isa_level() >= 2) {
    EXPECT_EQ(r.out.find("kernel Prescott"), std::string::npos) << r.out;
  }
}

TEST(BlasKernel, UserChoiceIsKeptAndASlowOneIsFlagged) {
  const LetheRun r = run_lethe("OPENBLAS_CORETYPE=Prescott", "version");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("kernel Prescott (OPENBLAS_CORETYPE=Prescott"), std::string::npos) << r.out;
  if (cpu_isa_level() > 0) {
    const std::string best = core_for_isa_level(cpu_isa_level());
    EXPECT_NE(r.out.find("WARNING: this CPU supports " + best), std::string::npos) << r.out;
  }
  const LetheRun off = run_lethe("LETHE_BLAS_AUTO=0", "version");
  ASSERT_EQ(off.code, 0) << off.err;
  EXPECT_NE(off.out.find("(detected by OpenBLAS"), std::string::npos) << off.out;
}

TEST(BlasKernel, KernelTheCpuCannotRunIsRefused) {
  if (cpu_isa_level() >= 3) GTEST_SKIP() << "this CPU runs every kernel lethe knows (AVX-512)";
  const LetheRun r = run_lethe("OPENBLAS_CORETYPE=SkylakeX", "version");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("OPENBLAS_CORETYPE=SkylakeX needs SkylakeX-class instructions"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace lethe
