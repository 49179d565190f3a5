// Device memory arena: one cudaMalloc at start-up, then bump allocation with stack-like
// release, so a training step allocates nothing from the driver (cudaMalloc synchronises
// the device and fragments memory over thousands of steps).
#pragma once
#include <cstddef>
#include <vector>

namespace lethe::cuda {

class Arena {
 public:
  static constexpr size_t kAlign = 256;  // cuBLASLt and 16-byte vector loads want this

  explicit Arena(size_t bytes);  // the one allocation; throws if the device lacks it
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Throws lethe::Error naming `what`, the request and the space left when full.
  void* alloc(size_t bytes, const char* what = "arena");
  template <typename T>
  T* alloc_n(size_t n, const char* what = "arena") {
    return static_cast<T*>(alloc(n * sizeof(T), what));
  }

  // Stack discipline: everything allocated after mark() is freed by release(mark).
  size_t mark() const { return used_; }
  void release(size_t mark);

  size_t used() const { return used_; }
  size_t peak() const { return peak_; }
  size_t capacity() const { return cap_; }

 private:
  char* base_ = nullptr;
  size_t cap_ = 0, used_ = 0, peak_ = 0;
};

}  // namespace lethe::cuda
