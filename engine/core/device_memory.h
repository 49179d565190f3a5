// Memory on an accelerator, for Tensor storage (engine/core/tensor.h).
//
// A backend provides the raw operations (the CUDA backend registers cudaMalloc, cudaFree,
// cudaMemcpy and cudaMemset at start-up, kernels/device.cpp); the caching allocator on top
// of it keeps freed blocks and hands them out again, so after the first step of a run no
// step calls the backend's malloc (cudaMalloc synchronises the device and costs
// milliseconds). Blocks are rounded up to 512 bytes, and requests above 1 MiB to a
// multiple of 2 MiB, so a block of a slightly different size can be reused; a request takes
// the smallest cached block that fits and is at most twice its size (a larger one would
// waste more than it saves). When the backend is out of memory the cache is returned to
// it and the request retried once; the error that follows names the request and what the
// allocator holds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace lethe {

enum class Device;
enum class DType;

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual const char* name() const = 0;
  // Null when the device has no room (the allocator then frees its cache and retries);
  // other failures (no device, no driver) raise lethe::Error naming the cause.
  virtual void* malloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  // Copies between host and device memory or within the device; `*_on_device` says
  // which side each pointer is on.
  virtual void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t bytes) = 0;
  virtual void zero(void* p, size_t bytes) = 0;
  // Converting copy of n elements between two device buffers (the bf16 policy's casts:
  // master weights to the bf16 copy the forward reads). False when the backend has no
  // kernel for the pair; Tensor::copy_from then converts through host memory.
  virtual bool convert(void* /*dst*/, DType /*dst_dtype*/, const void* /*src*/, DType /*src_dtype*/, int64_t /*n*/) {
    return false;
  }
};

class CachingAllocator {
 public:
  explicit CachingAllocator(DeviceBackend& backend) : backend_(backend) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t bytes);
  void release(void* p);
  // Returns every cached block to the backend.
  void empty_cache();
  static size_t rounded(size_t bytes);

  struct Stats {
    int64_t backend_mallocs = 0, backend_frees = 0;
    size_t in_use = 0, cached = 0;          // bytes of blocks handed out / kept for reuse
    size_t peak_in_use = 0, peak_reserved = 0;  // reserved = in use + cached
    // The bytes the tensors asked for, before rounding: what `lethe plan` counts.
    size_t requested = 0, peak_requested = 0;
  };
  Stats stats() const;
  // Restarts the peaks from what is in use now, to measure one phase of a run.
  void reset_peaks();
  DeviceBackend& backend() { return backend_; }

 private:
  void* backend_malloc(size_t bytes);
  DeviceBackend& backend_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;           // cached blocks by size
  struct Live {
    size_t size = 0, requested = 0;
  };
  std::unordered_map<void*, Live> live_;        // handed-out blocks
  Stats stats_;
};

// The backend for `device` (the CPU has none: host memory is Storage's own). Registered
// once by the backend's code; tests may swap in a stand-in and restore the previous one.
void register_device_backend(std::unique_ptr<DeviceBackend> backend);
// The allocator over the registered backend, or an error saying why there is none.
CachingAllocator& device_allocator();
bool device_backend_registered();
// Swaps the backend (and a fresh allocator over it) for tests; returns the previous one.
std::unique_ptr<DeviceBackend> swap_device_backend_for_testing(std::unique_ptr<DeviceBackend> backend);

}  // namespace lethe
