// Host-side view of the CUDA runtime for code compiled without nvcc: streams are opaque,
// errors become lethe::Error naming the op. Every kernel launcher in kernels/cuda/*.h
// takes device pointers and a Stream, and launches asynchronously on it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/core/bf16.h"

namespace lethe::cuda {

using Stream = void*;  // a cudaStream_t; nullptr is the legacy default stream

// A device is visible and usable (a CUDA build on a machine without a GPU answers false).
bool available();
// Why available() is false, for skip messages.
std::string unavailable_reason();
// Peak dense bf16 tensor throughput of the current device in FLOP/s, 0 where unknown.
double bf16_peak_flops();
std::string device_name();
// Free and total device memory in bytes.
void memory_info(size_t& free_bytes, size_t& total_bytes);

// Throws lethe::Error naming `op` if a previous launch failed (cheap: no sync). Under
// LETHE_DEBUG=1 it also synchronises the device, so a fault is reported by the kernel
// that caused it.
void check_launch(const char* op);

void* device_malloc(size_t bytes);  // throws with the size and free memory on failure
void device_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_device(void* dst, const void* src, size_t bytes, Stream s = nullptr);
// `rows` rows of `width` bytes, rows dpitch / spitch bytes apart (cudaMemcpy2DAsync).
void copy_device_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows,
                    Stream s = nullptr);
void fill_bytes(void* dst, int byte, size_t bytes, Stream s = nullptr);
void synchronize();

Stream stream_create();
void stream_destroy(Stream s);

// CUDA events for timing; elapsed in milliseconds.
struct Timer {
  Timer();
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void start(Stream s = nullptr);
  float stop(Stream s = nullptr);  // waits for the stop event
  void* a = nullptr;
  void* b = nullptr;
};

}  // namespace lethe::cuda
