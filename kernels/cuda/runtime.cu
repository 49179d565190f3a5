#include <string>

#include "engine/core/debug_mode.h"
#include "engine/core/peak_flops.h"
#include "kernels/cuda/common.cuh"

namespace lethe::cuda {

bool available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // a missing driver is sticky otherwise
    return false;
  }
  return n > 0;
}

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device: ") + cudaGetErrorString(e);
  }
  return n > 0 ? std::string() : std::string("no CUDA device visible");
}

std::string device_name() {
  int d = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&d) != cudaSuccess || cudaGetDeviceProperties(&p, d) != cudaSuccess) return "unknown";
  return p.name;
}

// Dense bf16 tensor-core peak per card (engine/core/peak_flops.cpp has the table).
double bf16_peak_flops() { return gpu_bf16_peak_flops(device_name()).flops; }

void memory_info(size_t& free_bytes, size_t& total_bytes) {
  LETHE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes), "memory_info");
}

void check_launch(const char* op) {
  LETHE_CUDA_CHECK(cudaGetLastError(), op);
  // Debug mode (LETHE_DEBUG=1): wait for the kernel, so a fault inside it is reported
  // under its own name rather than at the next synchronisation.
  if (debug_mode()) LETHE_CUDA_CHECK(cudaDeviceSynchronize(), "kernel " + std::string(op) + " (LETHE_DEBUG=1 check)");
}

void* device_malloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    LETHE_FAIL("cudaMalloc of ", bytes, " bytes failed (", cudaGetErrorString(e), "; ", free_b, " of ", total_b,
               " bytes free)");
  }
  return p;
}
void device_free(void* p) {
  if (p) cudaFree(p);
}
void copy_to_device(void* dst, const void* src, size_t bytes) {
  LETHE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy_to_device");
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  LETHE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy_to_host");
}
void copy_device(void* dst, const void* src, size_t bytes, Stream s) {
  LETHE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(s)), "copy_device");
}
void copy_device_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows, Stream s) {
  if (width == 0 || rows == 0) return;
  LETHE_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice, as_stream(s)),
                   "copy_device_2d");
}
void fill_bytes(void* dst, int byte, size_t bytes, Stream s) {
  LETHE_CUDA_CHECK(cudaMemsetAsync(dst, byte, bytes, as_stream(s)), "fill_bytes");
}
void synchronize() { LETHE_CUDA_CHECK(cudaDeviceSynchronize(), "synchronize"); }

Stream stream_create() {
  cudaStream_t s{};
  LETHE_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream_create");
  return s;
}
void stream_destroy(Stream s) {
  if (s) cudaStreamDestroy(as_stream(s));
}

Timer::Timer() {
  cudaEvent_t x{}, y{};
  LETHE_CUDA_CHECK(cudaEventCreate(&x), "Timer");
  LETHE_CUDA_CHECK(cudaEventCreate(&y), "Timer");
  a = x;
  b = y;
}
Timer::~Timer() {
  cudaEventDestroy(static_cast<cudaEvent_t>(a));
  cudaEventDestroy(static_cast<cudaEvent_t>(b));
}
void Timer::start(Stream s) { cudaEventRecord(static_cast<cudaEvent_t>(a), as_stream(s)); }
float Timer::stop(Stream s) {
  cudaEventRecord(static_cast<cudaEvent_t>(b), as_stream(s));
  LETHE_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(b)), "Timer::stop");
  float ms = 0;
  cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a), static_cast<cudaEvent_t>(b));
  return ms;
}

}  // namespace lethe::cuda
