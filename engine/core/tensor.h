// Tensor: dtype, device, shape and a shared storage. Always contiguous (row-major);
// a view is a contiguous sub-range of its parent's storage. No autograd: ops take
// pre-allocated outputs, as in llm.c.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/bf16.h"
#include "engine/core/f16.h"
#include "engine/core/error.h"

namespace lethe {

// f16 and bf16 are storage types: CPU kernels compute in f32/f64.
enum class DType { f32, f64, bf16, i32, f16 };
enum class Device { cpu, cuda };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<f16> { static constexpr DType value = DType::f16; };

// Owns raw bytes on one device. CUDA storage comes from the caching allocator over the
// registered CUDA backend (engine/core/device_memory.h); a build without one refuses it
// with a clear error rather than pretending.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;
  // Zero-initialised tensor.
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu);
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu);
  template <typename T>
  static Tensor from(const Shape& shape, const std::vector<T>& values) {
    Tensor t = empty(shape, dtype_of<T>::value);
    LETHE_CHECK(int64_t(values.size()) == t.numel(), "Tensor::from: ", values.size(), " values for shape ",
                shape_str(shape));
    std::copy(values.begin(), values.end(), t.data<T>());
    return t;
  }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;
  int ndim() const { return int(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const {
    LETHE_CHECK(defined(), "data() on an undefined tensor");
    LETHE_CHECK(device_ == Device::cpu, "data() reads host memory, and this ", dtype_name(dtype_), shape_str(shape_),
                " tensor is on ", device_name(device_), ": copy it with to(Device::cpu), or pass raw() to a kernel");
    LETHE_CHECK(dtype_of<T>::value == dtype_, "tensor holds ", dtype_name(dtype_), ", accessed as ",
                dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw());
  }

  // Same storage, new shape with the same element count.
  Tensor reshape(const Shape& shape) const;
  // Contiguous range of `count` elements starting at element `start`, viewed as `shape`.
  Tensor view(int64_t start, const Shape& shape) const;
  // Rows [begin, end) along the first dimension.
  Tensor slice_rows(int64_t begin, int64_t end) const;

  Tensor clone() const;
  // Converting copy (f32 <-> f64 <-> bf16 <-> f16; i32 only to i32), on the same device
  // (on a device through the backend's cast kernel, or through host memory without one).
  Tensor to(DType dtype) const;
  // The same values on another device (a copy; host <-> device through the backend).
  Tensor to(Device device) const;
  void zero_();
  void copy_from(const Tensor& src);  // same element count; converts dtype; any devices

  std::string describe() const;  // "f32[2,3] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

// For host code reading a result that may live on a device (evaluation, reports): the
// tensor itself when it is on the CPU, else a host copy with bf16 widened to f32 (exact:
// the values the CPU emulation of the bf16 policy holds in its f32 tensors).
Tensor to_host(const Tensor& t);

// Bytes of host tensor storage alive now, and the most alive at once since the last
// reset_host_tensor_peak(): tests bound what an operation holds beyond its inputs and outputs.
struct HostTensorBytes {
  size_t in_use = 0, peak = 0;
};
HostTensorBytes host_tensor_bytes();
void reset_host_tensor_peak();

// Shape/dtype checks used by every op; messages name the op and the argument.
void check_shape(const Tensor& t, const Shape& expected, const char* op, const char* arg);
void check_dtype(const Tensor& t, DType expected, const char* op, const char* arg);
void check_cpu(const Tensor& t, const char* op, const char* arg);

}  // namespace lethe
