#include "engine/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB
std::atomic<uint64_t> g_bytes_read{0};

// The dtypes read as stored (I64 narrows on a whole read; the others are refused).
std::optional<DType> stored_dtype(const std::string& d) {
  if (d == "F32") return DType::f32;
  if (d == "F64") return DType::f64;
  if (d == "BF16") return DType::bf16;
  if (d == "F16") return DType::f16;
  if (d == "I32") return DType::i32;
  return std::nullopt;
}

size_t st_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

const char* st_name(DType dt) {
  switch (dt) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::f16: return "F16";
  }
  return "?";
}
}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  std::error_code ec;
  LETHE_CHECK(fs::is_regular_file(path, ec), path, ": no such file");
  const uint64_t size = fs::file_size(path, ec);
  LETHE_CHECK(!ec && size >= 8, path, ": too small to be a safetensors file (", size, " bytes)");
  std::ifstream in(path, std::ios::binary);
  LETHE_CHECK(in.good(), path, ": cannot open for reading");
  unsigned char lenbuf[8];
  in.read(reinterpret_cast<char*>(lenbuf), 8);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | lenbuf[i];
  LETHE_CHECK(hlen <= kMaxHeader, path, ": header length ", hlen, " exceeds the 100 MB limit");
  LETHE_CHECK(hlen <= size - 8, path, ": header length ", hlen, " runs past the end of the file (", size,
              " bytes)");
  std::string header(size_t(hlen), '\0');
  in.read(header.data(), std::streamsize(hlen));
  LETHE_CHECK(in.good(), path, ": read error in header");
  json h;
  try {
    h = json::parse(header);
  } catch (const json::exception& e) {
    LETHE_FAIL(path, ": header is not valid JSON: ", e.what());
  }
  LETHE_CHECK(h.is_object(), path, ": header is not a JSON object");
  const uint64_t data_size = size - 8 - hlen;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      LETHE_CHECK(v.is_object(), path, ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        LETHE_CHECK(m.value().is_string(), path, ": __metadata__ value '", m.key(), "' is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    LETHE_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"), path,
                ": tensor '", name, "' needs dtype, shape and data_offsets");
    SafetensorsEntry e;
    LETHE_CHECK(v["dtype"].is_string(), path, ": tensor '", name, "': dtype is not a string");
    e.dtype = v["dtype"].get<std::string>();
    const size_t esz = st_dtype_size(e.dtype);
    LETHE_CHECK(esz > 0, path, ": tensor '", name, "': unknown dtype '", e.dtype, "'");
    LETHE_CHECK(v["shape"].is_array(), path, ": tensor '", name, "': shape is not a list");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      LETHE_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), path, ": tensor '",
                  name, "': shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      LETHE_CHECK(dim == 0 || numel <= std::numeric_limits<uint64_t>::max() / dim, path, ": tensor '", name,
                  "': shape overflows");
      numel *= dim;
      e.shape.push_back(int64_t(dim));
    }
    const json& off = v["data_offsets"];
    LETHE_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                path, ": tensor '", name, "': data_offsets must be two non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    LETHE_CHECK(e.begin <= e.end && e.end <= data_size, path, ": tensor '", name, "': data_offsets [", e.begin,
                ", ", e.end, ") outside the data section (", data_size, " bytes)");
    LETHE_CHECK(numel <= data_size / esz && e.end - e.begin == numel * esz, path, ": tensor '", name, "': ",
                e.end - e.begin, " bytes for shape ", shape_str(e.shape), " of ", e.dtype);
    f.entries_[name] = e;
  }
  // Tensors must not share bytes: overlapping ranges mean a crafted or corrupt header.
  std::vector<std::pair<uint64_t, const std::string*>> starts;
  for (const auto& [name, e] : f.entries_)
    if (e.end > e.begin) starts.emplace_back(e.begin, &name);
  std::sort(starts.begin(), starts.end());
  for (size_t i = 1; i < starts.size(); ++i)
    LETHE_CHECK(f.entries_.at(*starts[i - 1].second).end <= starts[i].first, path, ": tensors '",
                *starts[i - 1].second, "' and '", *starts[i].second, "' overlap in the data section");
  f.data_offset_ = 8 + hlen;
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_) out.push_back(k);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  LETHE_CHECK(it != entries_.end(), path_, ": no tensor named '", name, "'");
  return it->second;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const int64_t n = shape_numel(e.shape);
  // Only this tensor's bytes are read: a model loads one tensor at a time.
  std::ifstream in(path_, std::ios::binary);
  LETHE_CHECK(in.good(), path_, ": cannot open for reading");
  auto read = [&](void* dst, uint64_t bytes) {
    in.seekg(std::streamoff(data_offset_ + e.begin));
    in.read(static_cast<char*>(dst), std::streamsize(bytes));
    LETHE_CHECK(in.good() || bytes == 0, path_, ": tensor '", name, "': read error (was the file truncated?)");
    g_bytes_read += bytes;
  };
  auto copy = [&](DType dt) {
    Tensor t = Tensor::empty(e.shape, dt);
    read(t.raw(), t.nbytes());
    return t;
  };
  if (e.dtype == "F32") return copy(DType::f32);
  if (e.dtype == "F64") return copy(DType::f64);
  if (e.dtype == "BF16") return copy(DType::bf16);
  if (e.dtype == "I32") return copy(DType::i32);
  if (e.dtype == "F16") return copy(DType::f16);
  if (e.dtype == "I64") {
    std::vector<int64_t> raw(static_cast<size_t>(n));
    read(raw.data(), uint64_t(n) * 8);
    Tensor t = Tensor::empty(e.shape, DType::i32);
    int32_t* d = t.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = raw[size_t(i)];
      LETHE_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(), path_,
                  ": tensor '", name, "': value ", v, " does not fit int32");
      d[i] = int32_t(v);
    }
    return t;
  }
  LETHE_FAIL(path_, ": tensor '", name, "': dtype ", e.dtype, " is not supported here");
}

Tensor SafetensorsFile::block(const std::string& name, const std::vector<int64_t>& offset, const Shape& shape) const {
  const SafetensorsEntry& e = entry(name);
  const std::optional<DType> stored = stored_dtype(e.dtype);
  LETHE_CHECK(stored.has_value(), path_, ": tensor '", name, "': dtype ", e.dtype, " cannot be read in blocks");
  const DType dt = *stored;
  const size_t nd = e.shape.size();
  LETHE_CHECK((nd == 1 || nd == 2) && offset.size() == nd && shape.size() == nd, path_, ": tensor '", name,
              "' of shape ", shape_str(e.shape), ": a block needs a 1-D or 2-D box of its rank, got offset of ",
              offset.size(), " and shape ", shape_str(shape));
  for (size_t d = 0; d < nd; ++d)
    LETHE_CHECK(offset[d] >= 0 && shape[d] >= 0 && offset[d] + shape[d] <= e.shape[d], path_, ": tensor '", name,
                "' of shape ", shape_str(e.shape), ": block at dimension ", d, " [", offset[d], ", ",
                offset[d] + shape[d], ") is outside it");
  Tensor t = Tensor::empty(shape, dt);
  const uint64_t es = dtype_size(dt);
  // As rows: a 1-D tensor is one row.
  const int64_t rows = nd == 2 ? shape[0] : 1, row0 = nd == 2 ? offset[0] : 0;
  const int64_t width = e.shape[nd - 1], col0 = offset[nd - 1], cols = shape[nd - 1];
  if (rows == 0 || cols == 0) return t;
  std::ifstream in(path_, std::ios::binary);
  LETHE_CHECK(in.good(), path_, ": cannot open for reading");
  auto read = [&](uint64_t at, char* dst, uint64_t bytes) {
    in.seekg(std::streamoff(data_offset_ + e.begin + at));
    in.read(dst, std::streamsize(bytes));
    LETHE_CHECK(in.good(), path_, ": tensor '", name, "': read error (was the file truncated?)");
    g_bytes_read += bytes;
  };
  char* dst = static_cast<char*>(t.raw());
  if (cols == width) {
    read(uint64_t(row0 * width) * es, dst, uint64_t(rows * width) * es);
  } else {
    for (int64_t r = 0; r < rows; ++r)
      read(uint64_t((row0 + r) * width + col0) * es, dst + uint64_t(r * cols) * es, uint64_t(cols) * es);
  }
  return t;
}

uint64_t SafetensorsFile::bytes_read() { return g_bytes_read.load(); }

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {
    LETHE_CHECK(name != "__metadata__", "write_safetensors: reserved tensor name __metadata__");
    check_cpu(t, "write_safetensors", name.c_str());
    h[name] = {{"dtype", st_name(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {off, off + t.nbytes()}}};
    off += t.nbytes();
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LETHE_CHECK(out.good(), tmp, ": cannot open for writing");
    unsigned char lenbuf[8];
    uint64_t hl = header.size();
    for (int i = 0; i < 8; ++i) lenbuf[i] = uint8_t(hl >> (8 * i));
    out.write(reinterpret_cast<const char*>(lenbuf), 8);
    out.write(header.data(), std::streamsize(header.size()));
    for (const auto& [name, t] : tensors) out.write(static_cast<const char*>(t.raw()), std::streamsize(t.nbytes()));
    out.flush();
    LETHE_CHECK(out.good(), tmp, ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  LETHE_CHECK(!ec, "cannot rename ", tmp, " to ", path, ": ", ec.message());
}

}  // namespace lethe
