#include "kernels/device.h"

#include <memory>

#include "engine/core/device_memory.h"
#include "engine/core/error.h"
#ifdef LETHE_HAVE_CUDA
#include "kernels/cuda/attention.h"
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

namespace {
// The selection in a build without CUDA, where it only records the names.
std::string g_attention_forward = "wmma", g_attention_backward = "wmma";
}  // namespace

void select_cuda_attention_kernels(const std::string& forward, const std::string& forward_from,
                                   const std::string& backward, const std::string& backward_from) {
  LETHE_CHECK(forward == "wmma" || forward == "mma", forward_from,
              ": the attention forward kernel must be wmma or mma, got '", forward, "'");
  LETHE_CHECK(backward == "wmma" || backward == "mma" || backward == "mma_deterministic", backward_from,
              ": the attention backward kernel must be wmma, mma or mma_deterministic, got '", backward, "'");
  g_attention_forward = forward;
  g_attention_backward = backward;
#ifdef LETHE_HAVE_CUDA
  cuda::set_attention_forward_kernel(forward == "mma" ? cuda::AttentionForwardKernel::mma
                                                      : cuda::AttentionForwardKernel::wmma);
  cuda::set_attention_backward_kernel(backward == "mma"                 ? cuda::AttentionBackwardKernel::mma
                                      : backward == "mma_deterministic" ? cuda::AttentionBackwardKernel::mma_deterministic
                                                                        : cuda::AttentionBackwardKernel::wmma);
#endif
}

std::string cuda_attention_kernels() {
#ifdef LETHE_HAVE_CUDA
  return std::string("forward ") + cuda::attention_kernel_name(cuda::attention_forward_kernel()) + ", backward " +
         cuda::attention_kernel_name(cuda::attention_backward_kernel());
#else
  return "forward " + g_attention_forward + ", backward " + g_attention_backward;
#endif
}

}  // namespace lethe
