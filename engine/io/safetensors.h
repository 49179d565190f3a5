// safetensors (Hugging Face's tensor file): 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the data.
// Every offset, shape and size is checked against the file before anything is read.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"

namespace lethe {

struct SafetensorsEntry {
  std::string dtype;  // "F32", "F64", "BF16", "F16", "I32", "I64", ...
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
};

class SafetensorsFile {
 public:
  // Reads and validates the header against the file's size; errors name the file and the
  // tensor. No tensor data is read until tensor() asks for it.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Reads one tensor from the file. F32/F64/BF16/F16/I32 keep their dtype; I64 narrows to
  // i32 when every value fits.
  Tensor tensor(const std::string& name) const;
  // The box [offset, offset + shape) of a 1-D or 2-D F32/F64/BF16/F16/I32 tensor, reading
  // only its bytes: one range for whole rows, one per row for a column range (a tensor-
  // parallel rank's block of a weight). Errors name the file and the tensor.
  Tensor block(const std::string& name, const std::vector<int64_t>& offset, const Shape& shape) const;

  // Bytes of tensor data this process has read from safetensors files, for tests of what a
  // load reads.
  static uint64_t bytes_read();

 private:
  std::string path_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_offset_ = 0;  // where the data section starts in the file
};

// Writes tensors (f32, f64, bf16, f16, i32) to `path` via a temporary file and a rename, so an
// interrupted write never leaves a truncated file under the final name.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace lethe
