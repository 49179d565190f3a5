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

}  // namespace lethe
