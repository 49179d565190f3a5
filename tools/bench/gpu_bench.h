// What the GPU benchmarks share: the refusal without a device, the first line (the card
// and the peak MFU is measured against), the JSON file rewritten whole after every
// measurement (through a temporary name, so a device fault later in the run, which ends
// the process, keeps everything measured before it), and main's error handling.
#pragma once
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "engine/core/peak_flops.h"
#include "kernels/cuda/runtime.h"

namespace lethe::bench {

struct GpuInfo {
  std::string device;
  double peak_flops = 0;  // dense bf16; 0: unknown card, no MFU
  std::string peak_source;
};

// False, with the reason on stderr, when no GPU can be used (exit 2 then).
inline bool gpu_usable(const char* tool) {
  if (cuda::available()) return true;
  std::fprintf(stderr, "%s: %s\n", tool, cuda::unavailable_reason().c_str());
  return false;
}

// Prints the `device ...` line tools/gpu_check.sh puts in its stage list.
inline GpuInfo describe_gpu() {
  GpuInfo g;
  g.device = cuda::device_name();
  const PeakFlops pk = gpu_bf16_peak_flops(g.device);
  g.peak_flops = pk.flops;
  g.peak_source = pk.source;
  if (g.peak_flops > 0)
    std::printf("device %s; peak assumed %.0f TFLOP/s dense bf16 (%s)\n", g.device.c_str(), g.peak_flops / 1e12,
                g.peak_source.c_str());
  else
    std::printf("device %s; peak unknown, MFU not reported (%s)\n", g.device.c_str(), g.peak_source.c_str());
  std::fflush(stdout);
  return g;
}

inline nlohmann::json gpu_json(const GpuInfo& g) {
  return {{"device", g.device}, {"peak_tflops", g.peak_flops / 1e12}, {"peak_source", g.peak_source}};
}

// False (after saying so on stderr) when the file cannot be written; an empty path writes
// nothing.
inline bool write_json(const std::string& path, const nlohmann::json& j, const char* tool) {
  if (path.empty()) return true;
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  // replace: a stray byte in an error message must not cost the results.
  const std::string text = j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const bool wrote = f && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = f && std::fclose(f) == 0;
  if (!wrote || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::fprintf(stderr, "%s: cannot write %s\n", tool, path.c_str());
    return false;
  }
  return true;
}

// main() of a benchmark: an error that escapes run is reported as `tool: message`, exit 1.
inline int bench_main(const char* tool, int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: %s\n", tool, e.what());
    return 1;
  }
}

}  // namespace lethe::bench
