#include "engine/core/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "engine/core/device_memory.h"

namespace lethe {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
  }
  return 0;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    LETHE_CHECK(d >= 0, "negative dimension in shape ", shape_str(s));
    n *= d;
  }
  return n;
}

namespace {
std::atomic<size_t> g_host_in_use{0}, g_host_peak{0};
}  // namespace

HostTensorBytes host_tensor_bytes() { return {g_host_in_use.load(), g_host_peak.load()}; }
void reset_host_tensor_peak() { g_host_peak.store(g_host_in_use.load()); }

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (device != Device::cpu) {
    data_ = device_allocator().allocate(bytes);
    return;
  }
  // 64-byte alignment keeps SIMD loads and BLAS happy.
  size_t padded = ((bytes + 63) / 64) * 64;
  data_ = std::aligned_alloc(64, padded ? padded : 64);
  LETHE_CHECK(data_ != nullptr, "out of host memory allocating ", bytes, " bytes");
  const size_t now = g_host_in_use.fetch_add(bytes) + bytes;
  size_t peak = g_host_peak.load();
  while (now > peak && !g_host_peak.compare_exchange_weak(peak, now)) {
  }
}

Storage::~Storage() {
  if (device_ != Device::cpu) {
    device_allocator().release(data_);
    return;
  }
  std::free(data_);
  g_host_in_use.fetch_sub(bytes_);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

int64_t Tensor::dim(int i) const {
  if (i < 0) i += ndim();
  LETHE_CHECK(i >= 0 && i < ndim(), "dim ", i, " out of range for ", describe());
  return shape_[i];
}

Tensor Tensor::reshape(const Shape& shape) const {
  LETHE_CHECK(shape_numel(shape) == numel(), "cannot reshape ", describe(), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::view(int64_t start, const Shape& shape) const {
  int64_t n = shape_numel(shape);
  LETHE_CHECK(start >= 0 && start + n <= numel(), "view [", start, ", ", start + n, ") outside ", describe());
  Tensor t = *this;
  t.offset_ = offset_ + size_t(start) * dtype_size(dtype_);
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  LETHE_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice_rows [", begin, ", ", end,
              ") outside ", describe());
  Shape s = shape_;
  s[0] = end - begin;
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  return view(begin * row, s);
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  t.copy_from(*this);
  return t;
}

void Tensor::zero_() {
  LETHE_CHECK(defined(), "zero_: the tensor is undefined");
  if (device_ != Device::cpu) return device_allocator().backend().zero(raw(), nbytes());
  std::memset(raw(), 0, nbytes());
}

Tensor Tensor::to(Device device) const {
  LETHE_CHECK(defined(), "to(", device_name(device), "): the tensor is undefined");
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

namespace {
double load(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f64: return static_cast<const double*>(p)[i];
    case DType::bf16: return bf16_to_float(static_cast<const bf16*>(p)[i]);
    case DType::f16: return f16_to_float(static_cast<const f16*>(p)[i]);
    case DType::i32: return static_cast<const int32_t*>(p)[i];
  }
  return 0;
}
void store(void* p, DType dt, int64_t i, double v) {
  switch (dt) {
    case DType::f32: static_cast<float*>(p)[i] = float(v); break;
    case DType::f64: static_cast<double*>(p)[i] = v; break;
    case DType::bf16: static_cast<bf16*>(p)[i] = float_to_bf16(float(v)); break;
    case DType::f16: static_cast<f16*>(p)[i] = float_to_f16(float(v)); break;
    case DType::i32: static_cast<int32_t*>(p)[i] = int32_t(v); break;
  }
}
}  // namespace

void Tensor::copy_from(const Tensor& src) {
  LETHE_CHECK(defined() && src.defined(), "copy_from: an undefined tensor");
  LETHE_CHECK(src.numel() == numel(), "copy_from: ", src.describe(), " into ", describe());
  if (device_ != Device::cpu || src.device_ != Device::cpu) {
    if (src.dtype_ != dtype_) {
      LETHE_CHECK((src.dtype_ == DType::i32) == (dtype_ == DType::i32), "copy_from: cannot convert ",
                  src.describe(), " to ", describe());
      if (numel() == 0) return;
      if (device_ != Device::cpu && src.device_ != Device::cpu &&
          device_allocator().backend().convert(raw(), dtype_, src.raw(), src.dtype_, numel()))
        return;
      // No kernel for the pair, or one side on the host: convert on the host.
      const Tensor host = src.device_ == Device::cpu ? src : src.to(Device::cpu);
      Tensor converted = empty(shape_, dtype_);
      converted.copy_from(host.reshape(shape_));
      return copy_from(converted);
    }
    if (nbytes() == 0) return;
    return device_allocator().backend().copy(raw(), device_ != Device::cpu, src.raw(), src.device_ != Device::cpu,
                                             nbytes());
  }
  LETHE_CHECK((src.dtype_ == DType::i32) == (dtype_ == DType::i32), "copy_from: cannot convert ",
              src.describe(), " to ", describe());
  if (src.dtype_ == dtype_) {
    std::memmove(raw(), src.raw(), nbytes());
    return;
  }
  // bf16 -> f32 -> bf16 must round once, from the double value of the source.
  const void* s = src.raw();
  void* d = raw();
  for (int64_t i = 0, n = numel(); i < n; ++i) store(d, dtype_, i, load(s, src.dtype_, i));
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  Tensor t = empty(shape_, dtype, device_);
  t.copy_from(*this);
  return t;
}

Tensor to_host(const Tensor& t) {
  if (!t.defined() || t.device() == Device::cpu) return t;
  const Tensor h = t.to(Device::cpu);
  return h.dtype() == DType::bf16 ? h.to(DType::f32) : h;
}

std::string Tensor::describe() const {
  if (!defined()) return "<undefined tensor>";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device_name(device_);
}

void check_shape(const Tensor& t, const Shape& expected, const char* op, const char* arg) {
  LETHE_CHECK(t.defined(), op, ": ", arg, " is undefined");
  LETHE_CHECK(t.shape() == expected, op, ": ", arg, " has shape ", shape_str(t.shape()), ", expected ",
              shape_str(expected));
}

void check_dtype(const Tensor& t, DType expected, const char* op, const char* arg) {
  LETHE_CHECK(t.dtype() == expected, op, ": ", arg, " is ", dtype_name(t.dtype()), ", expected ",
              dtype_name(expected));
}

void check_cpu(const Tensor& t, const char* op, const char* arg) {
  LETHE_CHECK(t.defined(), op, ": ", arg, " is undefined");
  LETHE_CHECK(t.device() == Device::cpu, op, ": ", arg, " is on ", device_name(t.device()),
              "; this op has no CUDA kernel in this build");
}

}  // namespace lethe
