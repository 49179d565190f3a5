#include "kernels/device.h"

#include <memory>

#include "engine/core/device_memory.h"
#include "engine/core/error.h"
#ifdef LETHE_HAVE_CUDA
#include "kernels/cuda/device_ops.h"
#endif

namespace lethe {

#ifdef LETHE_HAVE_CUDA
std::vector<DeviceInfo> cuda_devices_impl();  // kernels/cuda/device.cu
std::unique_ptr<DeviceBackend> make_cuda_backend();
// Device tensors get their memory from CUDA in this build (engine/core/device_memory.h),
// and their ops run on the CUDA kernels (kernels/device_ops.h). Neither makes a CUDA call
// here, so a CUDA build still starts, and runs on the CPU, on a machine without a GPU.
[[maybe_unused]] const bool cuda_backend_registered = [] {
  register_device_backend(make_cuda_backend());
  register_device_ops(make_cuda_device_ops());
  return true;
}();
bool cuda_compiled() { return true; }
std::vector<DeviceInfo> cuda_devices() { return cuda_devices_impl(); }
void select_cuda_device_impl(int index);  // kernels/cuda/device.cu
void select_cuda_device(int index) { select_cuda_device_impl(index); }
#else
bool cuda_compiled() { return false; }
std::vector<DeviceInfo> cuda_devices() { return {}; }
void select_cuda_device(int index) { LETHE_FAIL("cannot select CUDA device ", index, ": this build has no CUDA"); }
#endif

}  // namespace lethe
