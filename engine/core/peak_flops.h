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

// Dense (no sparsity) bf16 tensor-core peak of a GPU, from the device name the CUDA runtime
// reports ("NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL", "NVIDIA H200", ...), per the
// vendor data sheets: H100/H200 SXM and GH200 989, H100/H200 NVL 835, H100 PCIe 756,
// A100 312, L40S 362 TFLOP/s. An unknown card gets 0 (no MFU) rather than a guess;
// LETHE_PEAK_TFLOPS overrides the table. No CUDA needed: it only reads the name.
PeakFlops gpu_bf16_peak_flops(const std::string& device_name);

}  // namespace lethe
