// The hardware's peak dense FLOP/s, the denominator of MFU. On CPU it is an estimate from
// /proc/cpuinfo (threads x clock x FLOP/cycle of the widest FMA unit); the clock a guest
// reports is usually the nominal one, so turbo makes MFU read high. LETHE_PEAK_TFLOPS
// overrides it for any device.
#pragma once
#include <string>

namespace lethe {

struct PeakFlops {
  double flops = 0;    // 0: unknown, MFU is not reported
  std::string source;  // how it was obtained, for logs and reports
};

PeakFlops cpu_peak_flops(int threads);

}  // namespace lethe
