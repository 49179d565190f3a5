// A small RAII layer over the HDF5 C library: just what lethe's token datasets and
// checkpoint shards need. Every failure is a lethe::Error naming the file and the object;
// HDF5's own error stack printing is silenced.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace lethe::h5 {

using hid = int64_t;  // hid_t, without exposing HDF5's headers

class File {
 public:
  static File open_read(const std::string& path);
  static File create(const std::string& path);  // truncates
  File(File&& o) noexcept;
  File& operator=(File&& o) noexcept;
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  // Every read below runs under a UntrustedRead (untrusted_read.h): libhdf5 can loop forever
  // on a malformed file, and the deadline turns that into an error naming the file.
  bool exists(const std::string& obj) const;   // "/a/b"
  std::vector<std::string> list(const std::string& group) const;  // member names

  // 1-D or N-D numeric datasets.
  Shape shape(const std::string& dset) const;
  std::vector<int64_t> read_i64(const std::string& dset) const;
  std::vector<int32_t> read_i32(const std::string& dset) const;
  std::vector<uint8_t> read_u8(const std::string& dset) const;
  // A dataset into a tensor of its stored kind: f32, f64, bf16 (stored as uint16 with
  // attribute dtype="bf16"), i32.
  Tensor read_tensor(const std::string& dset) const;
  // The box [offset, offset + box) of an N-D dataset, reading only its bytes.
  Tensor read_tensor_box(const std::string& dset, const std::vector<int64_t>& offset, const Shape& box) const;
  DType dtype(const std::string& dset) const;  // what read_tensor would return, without reading data
  bool is_integer(const std::string& dset) const;  // stored as an integer type
  void write_tensor(const std::string& dset, const Tensor& t);
  void write_i64(const std::string& dset, const std::vector<int64_t>& v);
  void write_u8(const std::string& dset, const std::vector<uint8_t>& v, const Shape& shape);

  // Attributes on a group or dataset.
  bool has_attr(const std::string& obj, const std::string& name) const;
  std::string attr_string(const std::string& obj, const std::string& name) const;
  int64_t attr_int(const std::string& obj, const std::string& name) const;
  std::vector<int64_t> attr_ints(const std::string& obj, const std::string& name) const;
  void set_attr(const std::string& obj, const std::string& name, const std::string& value);
  void set_attr(const std::string& obj, const std::string& name, int64_t value);
  void set_attr(const std::string& obj, const std::string& name, const std::vector<int64_t>& value);

  void ensure_group(const std::string& group);  // creates intermediate groups
  void flush();

 private:
  File(hid id, std::string path, int64_t bytes) : id_(id), path_(std::move(path)), bytes_(bytes) {}
  hid id_ = -1;
  std::string path_;
  int64_t bytes_ = 0;  // the file's size when opened for reading, for the read deadline
};

}  // namespace lethe::h5
