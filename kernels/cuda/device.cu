// Device discovery through the CUDA runtime. A missing driver or device is not an error:
// the caller falls back to CPU and says so.
#include <cuda_runtime.h>

#include "kernels/device.h"

namespace lethe {

std::vector<DeviceInfo> cuda_devices_impl() {
  std::vector<DeviceInfo> out;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return out;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    out.push_back({p.name, p.major, p.minor, p.totalGlobalMem});
  }
  return out;
}

}  // namespace lethe
