#include "kernels/cuda/numerics.h"

#include <climits>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {
namespace {
constexpr int kThreads = 256;

__device__ __forceinline__ bool finite(float v) { return isfinite(v); }
__device__ __forceinline__ bool finite(__nv_bfloat16 v) { return isfinite(__bfloat162float(v)); }

__global__ void init_result(unsigned long long* r) {
  r[0] = 0ull;
  r[1] = (unsigned long long)LLONG_MAX;
}

// Each thread counts its strided entries and keeps the lowest non-finite index; one
// integer atomic per block per field. Integer atomics commute: the result is exact.
template <typename T>
__global__ void scan_kernel(const T* __restrict__ x, int64_t n, unsigned long long* r) {
  unsigned long long count = 0, first = (unsigned long long)LLONG_MAX;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (!finite(x[i])) {
      if (count == 0) first = (unsigned long long)i;  // strided loop: the first hit is this thread's lowest
      ++count;
    }
  }
  __shared__ unsigned long long s_count, s_first;
  if (threadIdx.x == 0) {
    s_count = 0;
    s_first = (unsigned long long)LLONG_MAX;
  }
  __syncthreads();
  if (count) {
    atomicAdd(&s_count, count);
    atomicMin(&s_first, first);
  }
  __syncthreads();
  if (threadIdx.x == 0 && s_count) {
    atomicAdd(&r[0], s_count);
    atomicMin(&r[1], s_first);
  }
}

template <typename T>
void launch(const T* x, int64_t n, int64_t* result, Stream s, const char* op) {
  auto* r = reinterpret_cast<unsigned long long*>(result);
  init_result<<<1, 1, 0, as_stream(s)>>>(r);
  check_launch(op);
  if (n <= 0) return;
  scan_kernel<<<grid_for(n, kThreads, 4096), kThreads, 0, as_stream(s)>>>(x, n, r);
  check_launch(op);
}

// The two result words, one pair per device, allocated at the first scan and kept: a
// cudaMalloc/cudaFree per scan would synchronise the device and bypass the caching
// allocator, which may hold nearly all of its memory.
int64_t* result_words(const char* op) {
  static std::mutex mu;
  static std::unordered_map<int, int64_t*> words;
  int device = 0;
  LETHE_CUDA_CHECK(cudaGetDevice(&device), op);
  std::lock_guard<std::mutex> lock(mu);
  int64_t*& d = words[device];
  if (!d) d = static_cast<int64_t*>(device_malloc(2 * sizeof(int64_t)));
  return d;
}

template <typename T>
DeviceNonFinite find(const T* x, int64_t n, Stream s, const char* op) {
  int64_t* d = result_words(op);
  int64_t h[2] = {0, 0};
  launch(x, n, d, s, op);
  LETHE_CUDA_CHECK(cudaStreamSynchronize(as_stream(s)), op);
  copy_to_host(h, d, sizeof h);
  return {h[0], h[0] ? h[1] : -1};
}
}  // namespace

void nonfinite_scan(const bf16* x, int64_t n, int64_t* result, Stream s) {
  launch(dev(x), n, result, s, "nonfinite_scan(bf16)");
}
void nonfinite_scan(const float* x, int64_t n, int64_t* result, Stream s) {
  launch(x, n, result, s, "nonfinite_scan(f32)");
}
DeviceNonFinite find_nonfinite(const bf16* x, int64_t n, Stream s) { return find(dev(x), n, s, "find_nonfinite(bf16)"); }
DeviceNonFinite find_nonfinite(const float* x, int64_t n, Stream s) { return find(x, n, s, "find_nonfinite(f32)"); }

}  // namespace lethe::cuda
