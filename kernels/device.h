// What accelerators this process can see. The CPU build answers "none" without error.
#pragma once
#include <string>
#include <vector>

namespace lethe {

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability
  size_t memory_bytes = 0;
};

bool cuda_compiled();                      // built with the CUDA backend
std::vector<DeviceInfo> cuda_devices();    // empty without a driver or a device
// Makes this thread's CUDA calls use device `index`; an error names it. A CPU-only build
// has no device to select (an error).
void select_cuda_device(int index);

}  // namespace lethe
