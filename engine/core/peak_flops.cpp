#include "engine/core/peak_flops.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace lethe {

PeakFlops cpu_peak_flops(int threads) {
  PeakFlops p;
  if (const char* env = std::getenv("LETHE_PEAK_TFLOPS")) {
    char* end = nullptr;
    const double t = std::strtod(env, &end);
    if (end != env && t > 0) {
      p.flops = t * 1e12;
      p.source = std::string("LETHE_PEAK_TFLOPS=") + env;
      return p;
    }
  }
  std::ifstream f("/proc/cpuinfo");
  double mhz = 0;
  std::string flags, line;
  while (std::getline(f, line) && (mhz == 0 || flags.empty())) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    if (key == "cpu MHz" && mhz == 0) mhz = std::atof(line.c_str() + colon + 1);
    if (key == "flags" && flags.empty()) flags = " " + line.substr(colon + 1) + " ";
  }
  if (mhz <= 0 || flags.empty()) return p;
  // fp32 FLOP/cycle per core assuming two FMA ports: 16 lanes x 2 (FMA) x 2 ports with
  // AVX-512, 8 x 2 x 2 with AVX2+FMA, otherwise 4-lane SSE multiply + add.
  int per_cycle = 8;
  std::string isa = "sse";
  if (flags.find(" avx512f ") != std::string::npos) {
    per_cycle = 64;
    isa = "avx512";
  } else if (flags.find(" fma ") != std::string::npos && flags.find(" avx2 ") != std::string::npos) {
    per_cycle = 32;
    isa = "avx2";
  }
  p.flops = double(threads) * mhz * 1e6 * per_cycle;
  char b[128];
  std::snprintf(b, sizeof b, "estimate: %d threads x %.2f GHz x %d FLOP/cycle (%s, fp32)", threads, mhz / 1e3,
                per_cycle, isa.c_str());
  p.source = b;
  return p;
}

}  // namespace lethe
