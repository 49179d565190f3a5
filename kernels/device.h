// What accelerators this process can see. The CPU build answers "none" without error.
#pragma once
#include <string>
#include <vector>

namespace lethe {

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability
  size_t memory_bytes = 0;
  std::string uuid;  // 32 hex digits, unique per physical GPU (one GPU seen by two ranks has one uuid)
};

bool cuda_compiled();                      // built with the CUDA backend
std::vector<DeviceInfo> cuda_devices();    // empty without a driver or a device
// Makes this thread's CUDA calls use device `index`; an error names it. A CPU-only build
// has no device to select (an error).
void select_cuda_device(int index);

// The CUDA attention kernels this process uses (kernels/cuda/attention.h), by name:
// forward "wmma" (the default) or "mma"; backward "wmma" (the default), "mma" or
// "mma_deterministic". The mma kernels are opt-in until they pass the GPU tests on
// hardware. An unknown name fails, naming where it came from (`forward_from`,
// `backward_from`) and the choices; a build without CUDA checks the names and has nothing
// to select.
void select_cuda_attention_kernels(const std::string& forward, const std::string& forward_from,
                                   const std::string& backward, const std::string& backward_from);
// "forward <name>, backward <name>": the kernels selected now.
std::string cuda_attention_kernels();

}  // namespace lethe
