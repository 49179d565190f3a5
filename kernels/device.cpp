#include "kernels/device.h"

namespace lethe {

#ifdef LETHE_HAVE_CUDA
std::vector<DeviceInfo> cuda_devices_impl();  // kernels/cuda/device.cu
bool cuda_compiled() { return true; }
std::vector<DeviceInfo> cuda_devices() { return cuda_devices_impl(); }
#else
bool cuda_compiled() { return false; }
std::vector<DeviceInfo> cuda_devices() { return {}; }
#endif

}  // namespace lethe
