// Device discovery through the CUDA runtime, and the memory backend device tensors use. A
// missing driver or device is not an error: the caller falls back to CPU and says so.
#include <cuda_runtime.h>

#include <memory>

#include "engine/core/device_memory.h"
#include "engine/core/error.h"
#include "engine/core/tensor.h"
#include "kernels/cuda/cast.h"
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
    static const char* hex = "0123456789abcdef";
    std::string uuid;
    for (char c : p.uuid.bytes) uuid += {hex[(unsigned char)c >> 4], hex[(unsigned char)c & 15]};
    out.push_back({p.name, p.major, p.minor, p.totalGlobalMem, uuid});
  }
  return out;
}

void select_cuda_device_impl(int index) {
  const cudaError_t e = cudaSetDevice(index);
  LETHE_CHECK(e == cudaSuccess, "cudaSetDevice(", index, "): ", cudaGetErrorString(e));
}

namespace {

// Raw CUDA memory for the caching allocator (engine/core/device_memory.h). Copies between
// host and device synchronise the host: they stage checkpoints and inputs. Zeroing does
// not: the step zeroes its gradients and each forward its loss accumulator, and the memset
// is queued on the legacy default stream like the kernels (which it stays ordered with;
// NCCL orders its own stream after that one).
class CudaBackend : public DeviceBackend {
 public:
  const char* name() const override { return "cuda"; }
  void* malloc(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaSuccess) return p;
    cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) return nullptr;
    LETHE_FAIL("cuda: cannot allocate ", bytes, " bytes: ", cudaGetErrorString(e),
               e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? " (no usable CUDA device is visible)" : "");
  }
  void free(void* p) override { cudaFree(p); }
  void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t bytes) override {
    const cudaMemcpyKind kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                              : (src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    const cudaError_t e = cudaMemcpy(dst, src, bytes, kind);
    LETHE_CHECK(e == cudaSuccess, "cuda: copy of ", bytes, " bytes failed: ", cudaGetErrorString(e));
  }
  void zero(void* p, size_t bytes) override {
    const cudaError_t e = cudaMemsetAsync(p, 0, bytes, cudaStreamLegacy);
    LETHE_CHECK(e == cudaSuccess, "cuda: zeroing ", bytes, " bytes failed: ", cudaGetErrorString(e));
  }
  // Like zero this does not wait: it casts master weights into the bf16 copy
  // inside a step, and the kernel is queued on the default stream, before any kernel that
  // reads dst and any copy of it to the host.
  bool convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) override {
    if (src_dtype == DType::f32 && dst_dtype == DType::bf16) {
      cuda::cast_f32_to_bf16(static_cast<const float*>(src), static_cast<bf16*>(dst), n);
      return true;
    }
    if (src_dtype == DType::bf16 && dst_dtype == DType::f32) {
      cuda::cast_bf16_to_f32(static_cast<const bf16*>(src), static_cast<float*>(dst), n);
      return true;
    }
    return false;
  }
};

}  // namespace

std::unique_ptr<DeviceBackend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

}  // namespace lethe
