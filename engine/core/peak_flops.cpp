#include "engine/core/peak_flops.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace lethe {

namespace {
// LETHE_PEAK_TFLOPS, when set to a positive number.
bool peak_from_env(PeakFlops& p) {
  const char* env = std::getenv("LETHE_PEAK_TFLOPS");
  if (!env) return false;
  char* end = nullptr;
  const double t = std::strtod(env, &end);
  if (end == env || !(t > 0)) return false;
  p.flops = t * 1e12;
  p.source = std::string("LETHE_PEAK_TFLOPS=") + env;
  return true;
}
}  // namespace

PeakFlops gpu_bf16_peak_flops(const std::string& name) {
  PeakFlops p;
  if (peak_from_env(p)) return p;
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  // The form factor first: the NVL and PCIe cards of a generation run at lower clocks and
  // power than its SXM part, whose name carries no form factor ("NVIDIA H100 80GB HBM3",
  // "NVIDIA H200", "NVIDIA GH200 480GB").
  double tflops = 0;
  std::string card;
  if (has("H100") || has("H200") || has("H800")) {
    card = has("GH200") ? "GH200" : has("H200") ? "H200" : has("H800") ? "H800" : "H100";
    if (card == "GH200") tflops = 989;  // the Hopper GPU of the superchip, SXM-class clocks
    else if (has("NVL")) tflops = 835, card += " NVL";
    else if (has("PCIe") || has("PCIE")) tflops = 756, card += " PCIe";
    else tflops = 989, card += " SXM";
  } else if (has("A100") || has("A800")) {
    tflops = 312, card = "A100";
  } else if (has("L40S")) {
    tflops = 362, card = "L40S";
  } else {
    p.source = "unknown card: no MFU (set LETHE_PEAK_TFLOPS)";
    return p;
  }
  p.flops = tflops * 1e12;
  char b[160];
  std::snprintf(b, sizeof b, "%s data sheet: %.0f TFLOP/s dense bf16", card.c_str(), tflops);
  p.source = b;
  return p;
}

PeakFlops cpu_peak_flops(int threads) {
  PeakFlops p;
  if (peak_from_env(p)) return p;
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
