#include "kernels/cpu/blas_kernel.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "engine/core/error.h"

namespace lethe {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

int cpu_isa_level() {
  // __builtin_cpu_supports consults cpuid and, for AVX and AVX-512, whether the OS saves
  // the wider registers (XCR0): a feature the VM or kernel hides reads as absent.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return 3;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 2;
  if (__builtin_cpu_supports("avx")) return 1;
  return 0;
}

const char* core_for_isa_level(int level) {
  switch (level) {
    case 3: return "SkylakeX";
    case 2: return "Haswell";
    case 1: return "Sandybridge";
    default: return "Prescott";
  }
}

int isa_level_of_core(const std::string& core) {
  // OpenBLAS's DYNAMIC_ARCH core names (driver/others/dynamic.c), by the widest vector
  // ISA their sgemm/dgemm kernels use.
  static const struct {
    const char* name;
    int level;
  } kCores[] = {
      {"prescott", 0},    {"katmai", 0},       {"coppermine", 0},  {"northwood", 0}, {"core2", 0},
      {"penryn", 0},      {"dunnington", 0},   {"nehalem", 0},     {"atom", 0},      {"opteron", 0},
      {"opteron_sse3", 0}, {"barcelona", 0},   {"nano", 0},        {"bobcat", 0},    {"athlon", 0},
      {"sandybridge", 1}, {"bulldozer", 1},    {"piledriver", 1},  {"steamroller", 1}, {"excavator", 1},
      {"haswell", 2},     {"zen", 2},          {"skylakex", 3},    {"cooperlake", 3}, {"sapphirerapids", 3},
  };
  const std::string l = lower(core);
  for (const auto& c : kCores)
    if (l == c.name) return c.level;
  return -1;
}

BlasKernel blas_kernel() {
  BlasKernel k;
  const char* cfg = openblas_get_config();
  const char* core = openblas_get_corename();
  k.library = cfg ? cfg : "unknown";
  k.core = core ? core : "unknown";
  k.dynamic = k.library.find("DYNAMIC_ARCH") != std::string::npos;
  const int cpu = cpu_isa_level();
  k.cpu_best = core_for_isa_level(cpu);
  const int have = isa_level_of_core(k.core);
  k.below_cpu = have >= 0 && have < cpu;
  const std::string forced = env("OPENBLAS_CORETYPE"), detected = env("LETHE_BLAS_SELECTED");
  if (!forced.empty() && !detected.empty())
    k.how = "selected by lethe: OpenBLAS detected " + detected + " on a CPU that supports " + k.cpu_best;
  else if (!forced.empty())
    k.how = "OPENBLAS_CORETYPE=" + forced + (lower(forced) == lower(k.core) ? "" : ", not offered by this OpenBLAS");
  else
    k.how = "detected by OpenBLAS";
  return k;
}

std::string blas_kernel_line() {
  const BlasKernel k = blas_kernel();
  // Keep the version and build flags: a DYNAMIC_ARCH build also lists the kernel in use
  // (named below) and its thread limit.
  std::string lib;
  std::istringstream words(k.library);
  for (std::string w; words >> w;)
    if (lower(w) != lower(k.core) && w.rfind("MAX_THREADS=", 0) != 0) lib += (lib.empty() ? "" : " ") + w;
  std::string line = "BLAS: " + lib + ", kernel " + k.core + " (" + k.how;
  if (k.below_cpu) line += "; WARNING: this CPU supports " + k.cpu_best + ", GEMM runs several times slower";
  return line + ")";
}

void select_blas_kernel(char** argv) {
  if (env("LETHE_BLAS_AUTO") == "0") return;
  const int cpu = cpu_isa_level();
  const std::string forced = env("OPENBLAS_CORETYPE");
  if (!forced.empty()) {
    const int need = isa_level_of_core(forced);
    LETHE_CHECK(need <= cpu, "OPENBLAS_CORETYPE=", forced, " needs ", core_for_isa_level(need),
                "-class instructions, which this CPU (or the VM it runs in) does not expose; the best it supports is ",
                core_for_isa_level(cpu), " (unset OPENBLAS_CORETYPE to let lethe choose)");
    return;
  }
  const BlasKernel k = blas_kernel();
  if (!k.dynamic || !k.below_cpu) return;
  // Same pid and arguments: mpirun / srun still see the process they started, and MPI
  // has not been initialised yet.
  setenv("OPENBLAS_CORETYPE", k.cpu_best.c_str(), 1);
  setenv("LETHE_BLAS_SELECTED", k.core.c_str(), 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  // Not fatal: the run is right, only slower. Say so and go on with the library's choice.
  std::fprintf(stderr, "lethe: warning: could not re-execute with OPENBLAS_CORETYPE=%s (%s); GEMM runs the %s kernel\n",
               k.cpu_best.c_str(), std::strerror(errno), k.core.c_str());
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv("LETHE_BLAS_SELECTED");
}

}  // namespace lethe
