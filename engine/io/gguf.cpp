#include "engine/io/gguf.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <type_traits>

#include "engine/model/llama.h"
#include "kernels/rope.h"

namespace lethe {
namespace fs = std::filesystem;
static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

namespace {
constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
constexpr uint64_t kMaxArray = 1ull << 26;  // far above any vocabulary; bounds memory on hostile counts
constexpr int kMaxNesting = 4;            // arrays of arrays: parsed and skipped, never stored

struct GgmlLayout {
  uint32_t id;
  const char* name;
  uint64_t block, bytes;  // values per block, bytes per block
};
// ggml's type table (ggml.h / gguf-py GGML_QUANT_SIZES); ids absent here were removed from ggml.
constexpr GgmlLayout kGgmlTypes[] = {
    {0, "F32", 1, 4},          {1, "F16", 1, 2},          {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},       {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 40},
    {10, "Q2_K", 256, 84},     {11, "Q3_K", 256, 110},    {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},    {15, "Q8_K", 256, 292},    {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98},  {19, "IQ1_S", 256, 50},    {20, "IQ4_NL", 32, 18},  {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},    {23, "IQ4_XS", 256, 136},  {24, "I8", 1, 1},        {25, "I16", 1, 2},
    {26, "I32", 1, 4},         {27, "I64", 1, 8},         {28, "F64", 1, 8},       {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},        {34, "TQ1_0", 256, 54},    {35, "TQ2_0", 256, 66},  {39, "MXFP4", 32, 17},
    {40, "NVFP4", 64, 36},     {41, "Q1_0", 128, 18},
};

const GgmlLayout* ggml_layout(uint32_t id) {
  for (const auto& t : kGgmlTypes)
    if (t.id == id) return &t;
  return nullptr;
}

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::u16: case GgufType::i16:
    case GgufType::u32: case GgufType::i32: case GgufType::u64: case GgufType::i64:
      return true;
    default:
      return false;
  }
}
bool is_float_type(GgufType t) { return t == GgufType::f32 || t == GgufType::f64; }
bool valid_type(uint32_t t) { return t <= uint32_t(GgufType::f64); }

// Smallest encoding of one value of type t: a bound for "does the file hold `count` of them".
uint64_t min_size(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::string: case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
    case GgufType::array: return 12;  // element type + count
  }
  return 1;
}

float load_half(const uint8_t* p) {
  f16 h;
  std::memcpy(&h.bits, p, 2);
  return f16_to_float(h);
}

// The block formats below are ggml's reference dequantisers. Each product d * q is exact in
// float (an 11-bit half mantissa times a small integer fits 24 bits), so the result is the
// same bit pattern with or without FMA contraction, and equal to gguf-py's numpy version.
void dequant_q8_0(const uint8_t* src, float* dst, int64_t nblocks) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* blk = src + 34 * b;
    const float d = load_half(blk);
    for (int j = 0; j < 32; ++j) dst[32 * b + j] = d * float(int8_t(blk[2 + j]));
  }
}

// Q4_0 / Q4_1 pack value j in the low nibble and value j + 16 in the high nibble of byte j.
void dequant_q4_0(const uint8_t* src, float* dst, int64_t nblocks) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* blk = src + 18 * b;
    const float d = load_half(blk);
    for (int j = 0; j < 16; ++j) {
      dst[32 * b + j] = d * float(int(blk[2 + j] & 0x0f) - 8);
      dst[32 * b + j + 16] = d * float(int(blk[2 + j] >> 4) - 8);
    }
  }
}

void dequant_q4_1(const uint8_t* src, float* dst, int64_t nblocks) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* blk = src + 20 * b;
    const float d = load_half(blk), m = load_half(blk + 2);
    for (int j = 0; j < 16; ++j) {
      dst[32 * b + j] = d * float(blk[4 + j] & 0x0f) + m;
      dst[32 * b + j + 16] = d * float(blk[4 + j] >> 4) + m;
    }
  }
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t& out) { return __builtin_mul_overflow(a, b, &out); }
}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"uint8", "int8",  "uint16", "int16", "uint32", "int32",  "float32",
                                "bool",  "string", "array", "uint64", "int64", "float64"};
  return valid_type(uint32_t(t)) ? names[uint32_t(t)] : "unknown";
}

std::string ggml_type_name(uint32_t type) {
  const GgmlLayout* l = ggml_layout(type);
  return l ? l->name : "unknown";
}

Shape GgufTensorInfo::shape() const {
  Shape s;
  for (auto it = ne.rbegin(); it != ne.rend(); ++it) s.push_back(int64_t(*it));
  return s;
}

// ---- parsing -------------------------------------------------------------------------

// Reads the header field by field; every read first checks that the file holds the bytes.
class GgufParser {
 public:
  GgufParser(GgufFile& f, uint64_t size) : f_(f), size_(size), in_(f.path_, std::ios::binary) {
    LETHE_CHECK(in_.good(), f_.path_, ": cannot open for reading");
  }

  void run();

 private:
  uint64_t left() const { return size_ - pos_; }
  void need(uint64_t n, const std::string& what) {
    LETHE_CHECK(n <= left(), f_.path_, ": ", what, " needs ", n, " bytes at offset ", pos_,
                " but the file ends ", left(), " bytes later (truncated or corrupt)");
  }
  void bytes(void* dst, uint64_t n, const std::string& what) {
    need(n, what);
    in_.read(static_cast<char*>(dst), std::streamsize(n));
    LETHE_CHECK(in_.good(), f_.path_, ": read error in ", what);
    pos_ += n;
  }
  template <typename T>
  T read(const std::string& what) {
    T v;
    bytes(&v, sizeof(T), what);
    return v;
  }
  std::string read_string(const std::string& what) {
    const uint64_t n = read<uint64_t>(what);
    LETHE_CHECK(n <= left(), f_.path_, ": ", what, ": string length ", n, " runs past the end of the file (",
                left(), " bytes left at offset ", pos_, ")");
    std::string s(size_t(n), '\0');
    bytes(s.data(), n, what);
    return s;
  }
  GgufType read_type(const std::string& what) {
    const uint32_t t = read<uint32_t>(what);
    LETHE_CHECK(valid_type(t), f_.path_, ": ", what, " has unknown value type ", t);
    return GgufType(t);
  }
  void read_scalar(GgufType t, GgufFile::Value& v, const std::string& what);
  void read_array(GgufFile::Value& v, const std::string& what, int depth);
  void read_kv(uint64_t i);
  void read_tensor_info(uint64_t i);
  void check_layout();

  GgufFile& f_;
  uint64_t size_, pos_ = 0;
  std::ifstream in_;
};

void GgufParser::read_scalar(GgufType t, GgufFile::Value& v, const std::string& what) {
  switch (t) {
    case GgufType::u8: v.ints.push_back(read<uint8_t>(what)); break;
    case GgufType::i8: v.ints.push_back(read<int8_t>(what)); break;
    case GgufType::u16: v.ints.push_back(read<uint16_t>(what)); break;
    case GgufType::i16: v.ints.push_back(read<int16_t>(what)); break;
    case GgufType::u32: v.ints.push_back(read<uint32_t>(what)); break;
    case GgufType::i32: v.ints.push_back(read<int32_t>(what)); break;
    case GgufType::u64: v.ints.push_back(std::bit_cast<int64_t>(read<uint64_t>(what))); break;
    case GgufType::i64: v.ints.push_back(read<int64_t>(what)); break;
    case GgufType::f32: v.floats.push_back(read<float>(what)); break;
    case GgufType::f64: v.floats.push_back(read<double>(what)); break;
    case GgufType::boolean: v.ints.push_back(read<uint8_t>(what) != 0); break;
    case GgufType::string: v.strings.push_back(read_string(what)); break;
    case GgufType::array: read_array(v, what, 1); break;
  }
}

void GgufParser::read_array(GgufFile::Value& v, const std::string& what, int depth) {
  LETHE_CHECK(depth <= kMaxNesting, f_.path_, ": ", what, ": arrays nested deeper than ", kMaxNesting);
  const GgufType elem = read_type(what + " (array element)");
  const uint64_t n = read<uint64_t>(what);
  LETHE_CHECK(n <= kMaxArray, f_.path_, ": ", what, ": array of ", n, " elements exceeds lethe's limit of ",
              kMaxArray);
  LETHE_CHECK(n <= left() / min_size(elem), f_.path_, ": ", what, ": array of ", n, " ", gguf_type_name(elem),
              " needs more bytes than the file has left (", left(), " at offset ", pos_, ")");
  if (depth == 1) v.elem = elem;
  if (elem == GgufType::array) {
    GgufFile::Value skipped;  // validated, not kept: no lethe reader needs nested arrays
    for (uint64_t i = 0; i < n; ++i) {
      read_array(skipped, what, depth + 1);
      skipped = {};
    }
    return;
  }
  if (elem == GgufType::string || elem == GgufType::boolean) {
    for (uint64_t i = 0; i < n; ++i) read_scalar(elem, v, what);
    return;
  }
  // Fixed-size numbers: one read, then decode.
  const uint64_t esz = min_size(elem);
  std::vector<uint8_t> buf(size_t(n * esz));
  bytes(buf.data(), buf.size(), what);
  auto decode = [&](auto tag, auto& out) {
    using T = decltype(tag);
    out.reserve(out.size() + n);
    for (uint64_t i = 0; i < n; ++i) {
      T x;
      std::memcpy(&x, buf.data() + i * sizeof(T), sizeof(T));
      if constexpr (std::is_same_v<T, uint64_t>)
        out.push_back(std::bit_cast<int64_t>(x));
      else
        out.push_back(x);
    }
  };
  switch (elem) {
    case GgufType::u8: decode(uint8_t{}, v.ints); break;
    case GgufType::i8: decode(int8_t{}, v.ints); break;
    case GgufType::u16: decode(uint16_t{}, v.ints); break;
    case GgufType::i16: decode(int16_t{}, v.ints); break;
    case GgufType::u32: decode(uint32_t{}, v.ints); break;
    case GgufType::i32: decode(int32_t{}, v.ints); break;
    case GgufType::u64: decode(uint64_t{}, v.ints); break;
    case GgufType::i64: decode(int64_t{}, v.ints); break;
    case GgufType::f32: decode(float{}, v.floats); break;
    case GgufType::f64: decode(double{}, v.floats); break;
    default: break;
  }
}

void GgufParser::read_kv(uint64_t i) {
  const std::string key = read_string("metadata key #" + std::to_string(i));
  const std::string what = "key '" + key + "'";
  LETHE_CHECK(!f_.kv_.count(key), f_.path_, ": ", what, " appears twice");
  GgufFile::Value v;
  v.type = read_type(what);
  read_scalar(v.type, v, what);
  f_.kv_.emplace(key, std::move(v));
  f_.key_order_.push_back(key);
}

void GgufParser::read_tensor_info(uint64_t i) {
  GgufTensorInfo t;
  t.name = read_string("tensor info #" + std::to_string(i));
  const std::string what = "tensor '" + t.name + "'";
  LETHE_CHECK(!f_.index_.count(t.name), f_.path_, ": ", what, " appears twice");
  const uint32_t n_dims = read<uint32_t>(what);
  LETHE_CHECK(n_dims >= 1 && n_dims <= kMaxDims, f_.path_, ": ", what, " has ", n_dims,
              " dimensions; GGUF allows 1 to ", kMaxDims);
  uint64_t numel = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t n = read<uint64_t>(what);
    LETHE_CHECK(!mul_overflows(numel, n, numel) && numel <= uint64_t(std::numeric_limits<int64_t>::max()),
                f_.path_, ": ", what, ": dimensions overflow 64 bits");
    t.ne.push_back(n);
  }
  t.type = read<uint32_t>(what);
  t.offset = read<uint64_t>(what);
  const GgmlLayout* l = ggml_layout(t.type);
  LETHE_CHECK(l, f_.path_, ": ", what, " has unknown ggml type ", t.type);
  LETHE_CHECK(t.ne[0] % l->block == 0, f_.path_, ": ", what, ": row length ", t.ne[0], " is not a multiple of ",
              l->name, "'s block of ", l->block);
  // numel fits int64 and the block is at least one value, so this product cannot overflow.
  t.nbytes = numel / l->block * l->bytes;
  f_.index_[t.name] = f_.tensors_.size();
  f_.tensors_.push_back(std::move(t));
}

void GgufParser::check_layout() {
  if (f_.has("general.alignment")) {
    const GgufFile::Value& v = f_.value("general.alignment");
    LETHE_CHECK(is_int_type(v.type), f_.path_, ": key 'general.alignment' is ", gguf_type_name(v.type),
                ", not an integer");
    const int64_t a = f_.int_at("general.alignment", v, 0);
    LETHE_CHECK(a > 0 && (a & (a - 1)) == 0 && a <= (1 << 20), f_.path_, ": key 'general.alignment' is ", a,
                ", not a power of two up to 1 MiB");
    f_.alignment_ = uint64_t(a);
  }
  f_.data_offset_ = (pos_ + f_.alignment_ - 1) / f_.alignment_ * f_.alignment_;
  if (f_.tensors_.empty()) return;
  LETHE_CHECK(f_.data_offset_ <= size_, f_.path_, ": the data section would start at ", f_.data_offset_,
              ", past the end of the file (", size_, " bytes)");
  const uint64_t data_size = size_ - f_.data_offset_;
  for (GgufTensorInfo& t : f_.tensors_) {
    LETHE_CHECK(t.offset % f_.alignment_ == 0, f_.path_, ": tensor '", t.name, "': offset ", t.offset,
                " is not a multiple of the alignment ", f_.alignment_);
    LETHE_CHECK(t.offset <= data_size, f_.path_, ": tensor '", t.name, "': offset ", t.offset,
                " is past the end of the data section (", data_size, " bytes)");
    LETHE_CHECK(t.nbytes <= data_size - t.offset, f_.path_, ": tensor '", t.name, "': data [", t.offset, ", ",
                t.offset + t.nbytes, ") runs past the end of the data section (", data_size, " bytes) for ",
                ggml_type_name(t.type), " ", shape_str(t.shape()));
    t.offset += f_.data_offset_;
  }
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : f_.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto *a = by_offset[i - 1], *b = by_offset[i];
    LETHE_CHECK(a->offset + a->nbytes <= b->offset, f_.path_, ": tensors '", a->name, "' and '", b->name,
                "' overlap");
  }
}

void GgufParser::run() {
  char magic[4];
  bytes(magic, 4, "the GGUF magic");
  LETHE_CHECK(std::memcmp(magic, "GGUF", 4) == 0, f_.path_, ": not a GGUF file (bad magic)");
  const uint32_t version = read<uint32_t>("the version");
  LETHE_CHECK(version != 0x02000000u && version != 0x03000000u, f_.path_,
              ": big-endian GGUF is not supported (lethe reads little-endian files)");
  LETHE_CHECK(version == 2 || version == 3, f_.path_, ": GGUF version ", version,
              " is not supported (lethe reads versions 2 and 3)");
  f_.version_ = version;
  const uint64_t n_tensors = read<uint64_t>("the tensor count");
  const uint64_t n_kv = read<uint64_t>("the metadata count");
  // A key/value takes at least 13 bytes and a tensor info at least 24 (name length, one
  // dimension, type, offset), so impossible counts fail here rather than after allocating.
  LETHE_CHECK(n_kv <= left() / 13, f_.path_, ": metadata count ", n_kv, " needs more bytes than the file has (",
              size_, ")");
  LETHE_CHECK(n_tensors <= left() / 32, f_.path_, ": tensor count ", n_tensors,
              " needs more bytes than the file has (", size_, ")");
  for (uint64_t i = 0; i < n_kv; ++i) read_kv(i);
  for (uint64_t i = 0; i < n_tensors; ++i) read_tensor_info(i);
  check_layout();
}

GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.path_ = path;
  std::error_code ec;
  LETHE_CHECK(fs::is_regular_file(path, ec), path, ": no such file");
  const uint64_t size = fs::file_size(path, ec);
  LETHE_CHECK(!ec, path, ": cannot read the file size: ", ec.message());
  GgufParser(f, size).run();
  return f;
}

// ---- metadata ------------------------------------------------------------------------

const GgufFile::Value& GgufFile::value(const std::string& key) const {
  auto it = kv_.find(key);
  LETHE_CHECK(it != kv_.end(), path_, ": no metadata key '", key, "'");
  return it->second;
}

void GgufFile::wrong_type(const std::string& key, const char* wanted) const {
  const Value& v = value(key);
  if (v.type == GgufType::array)
    LETHE_FAIL(path_, ": key '", key, "' is an array of ", gguf_type_name(v.elem), ", not ", wanted);
  LETHE_FAIL(path_, ": key '", key, "' is ", gguf_type_name(v.type), ", not ", wanted);
}

int64_t GgufFile::int_at(const std::string& key, const Value& v, size_t i) const {
  const GgufType t = v.type == GgufType::array ? v.elem : v.type;
  // A uint64 is kept as its bits: negative here means it was above INT64_MAX.
  LETHE_CHECK(t != GgufType::u64 || v.ints[i] >= 0, path_, ": key '", key, "': uint64 value ",
              std::bit_cast<uint64_t>(v.ints[i]), " does not fit int64");
  return v.ints[i];
}

GgufType GgufFile::type(const std::string& key) const { return value(key).type; }

GgufType GgufFile::array_type(const std::string& key) const {
  const Value& v = value(key);
  if (v.type != GgufType::array) wrong_type(key, "an array");
  return v.elem;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const Value& v = value(key);
  if (!is_int_type(v.type)) wrong_type(key, "an integer");
  return int_at(key, v, 0);
}

double GgufFile::get_float(const std::string& key) const {
  const Value& v = value(key);
  if (is_float_type(v.type)) return v.floats[0];
  if (is_int_type(v.type)) return double(int_at(key, v, 0));
  wrong_type(key, "a number");
}

bool GgufFile::get_bool(const std::string& key) const {
  const Value& v = value(key);
  if (v.type != GgufType::boolean) wrong_type(key, "a bool");
  return v.ints[0] != 0;
}

std::string GgufFile::get_string(const std::string& key) const {
  const Value& v = value(key);
  if (v.type != GgufType::string) wrong_type(key, "a string");
  return v.strings[0];
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const Value& v = value(key);
  if (v.type != GgufType::array || !is_int_type(v.elem)) wrong_type(key, "an array of integers");
  std::vector<int64_t> out(v.ints.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = int_at(key, v, i);
  return out;
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  const Value& v = value(key);
  if (v.type == GgufType::array && is_float_type(v.elem)) return v.floats;
  if (v.type == GgufType::array && is_int_type(v.elem)) {
    std::vector<double> out(v.ints.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = double(int_at(key, v, i));
    return out;
  }
  wrong_type(key, "an array of numbers");
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const Value& v = value(key);
  if (v.type != GgufType::array || v.elem != GgufType::string) wrong_type(key, "an array of strings");
  return v.strings;
}

// ---- tensors -------------------------------------------------------------------------

std::vector<std::string> GgufFile::tensor_names() const {
  std::vector<std::string> out;
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

const GgufTensorInfo& GgufFile::tensor_info(const std::string& name) const {
  auto it = index_.find(name);
  LETHE_CHECK(it != index_.end(), path_, ": no tensor named '", name, "'");
  return tensors_[it->second];
}

Tensor GgufFile::tensor_f32(const std::string& name) const {
  const GgufTensorInfo& t = tensor_info(name);
  const uint32_t ty = t.type;
  const bool supported = ty == uint32_t(GgmlType::f32) || ty == uint32_t(GgmlType::f16) ||
                         ty == uint32_t(GgmlType::bf16) || ty == uint32_t(GgmlType::q8_0) ||
                         ty == uint32_t(GgmlType::q4_0) || ty == uint32_t(GgmlType::q4_1);
  LETHE_CHECK(supported, path_, ": tensor '", name, "' has ggml type ", ty, " (", ggml_type_name(ty),
              ") which lethe does not dequantise (F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
  Tensor out = Tensor::empty(t.shape(), DType::f32);
  std::vector<uint8_t> raw;
  void* dst = out.raw();
  if (ty != uint32_t(GgmlType::f32)) {
    raw.resize(size_t(t.nbytes));
    dst = raw.data();
  }
  std::ifstream in(path_, std::ios::binary);
  in.seekg(std::streamoff(t.offset));
  in.read(static_cast<char*>(dst), std::streamsize(t.nbytes));
  LETHE_CHECK(in.good() || t.nbytes == 0, path_, ": tensor '", name, "': read error (was the file changed?)");
  float* o = out.data<float>();
  const int64_t n = out.numel();
  switch (GgmlType(ty)) {
    case GgmlType::f32: break;
    case GgmlType::f16:
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) o[i] = load_half(raw.data() + 2 * i);
      break;
    case GgmlType::bf16:
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        bf16 b;
        std::memcpy(&b.bits, raw.data() + 2 * i, 2);
        o[i] = bf16_to_float(b);
      }
      break;
    case GgmlType::q8_0: dequant_q8_0(raw.data(), o, n / 32); break;
    case GgmlType::q4_0: dequant_q4_0(raw.data(), o, n / 32); break;
    case GgmlType::q4_1: dequant_q4_1(raw.data(), o, n / 32); break;
  }
  return out;
}

// ---- Llama -----------------------------------------------------------------------------

namespace {
// llama.cpp writes some hyperparameters per layer as arrays; lethe's config has one value.
int64_t uniform_int(const GgufFile& f, const std::string& key) {
  if (f.type(key) != GgufType::array) return f.get_int(key);
  const auto v = f.get_int_array(key);
  LETHE_CHECK(!v.empty() && std::all_of(v.begin(), v.end(), [&](int64_t x) { return x == v[0]; }), f.path(),
              ": key '", key, "' differs between layers, which lethe's LlamaConfig cannot express");
  return v[0];
}

// Llama-3.1-style scaling reaches GGUF only as the tensor rope_freqs.weight (llama.cpp
// divides base frequency i by entry i); the converter drops the parameters. Recover them
// assuming Meta's low/high factors (1, 4), solve for the factor from the lowest frequency,
// and accept only if lethe's formula then reproduces every entry.
ops::RopeScaling rope_from_freq_factors(const GgufFile& f, int64_t hd, double theta, int64_t orig_ctx) {
  const Tensor t = f.tensor_f32("rope_freqs.weight");
  LETHE_CHECK(t.numel() == hd / 2, f.path(), ": tensor 'rope_freqs.weight' has ", t.numel(),
              " entries; head_dim ", hd, " needs ", hd / 2);
  const float* ff = t.data<float>();
  const std::vector<double> base = ops::rope_inv_freq(hd, theta, {});
  ops::RopeScaling s;
  s.type = "llama3";
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings = orig_ctx;
  const double pi = 3.141592653589793, last = double(ff[hd / 2 - 1]);
  const double wavelen = 2 * pi / base.back(), old = double(orig_ctx);
  if (wavelen > old / s.low_freq_factor) {
    s.factor = last;
  } else if (wavelen >= old / s.high_freq_factor) {
    const double smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    s.factor = (1 - smooth) / (1 / last - smooth);
  } else {
    s.type = "none";  // every frequency is above the scaled band: the factors must all be 1
  }
  bool match = s.type == "none" || (std::isfinite(s.factor) && s.factor >= 1);
  const std::vector<double> mine = match ? ops::rope_inv_freq(hd, theta, s) : base;
  // rope_freqs is float32 computed from float32 frequencies: agree to 1e-5, not exactly.
  for (int64_t i = 0; i < hd / 2 && match; ++i) {
    const double theirs = base[i] / double(ff[i]);
    match = std::abs(mine[i] - theirs) <= 1e-5 * theirs;
  }
  LETHE_CHECK(match, f.path(), ": tensor 'rope_freqs.weight' does not match Llama-3 RoPE scaling with ",
              "low_freq_factor 1, high_freq_factor 4 and original context ", orig_ctx,
              "; lethe cannot express these frequencies");
  return s;
}

// GGUF and transformers names of the per-layer weights (llama.cpp's gguf-py tensor_mapping).
constexpr std::pair<const char*, const char*> kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},      {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},        {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};
constexpr std::pair<const char*, const char*> kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

// Maps a name between the two conventions: "blk.N.x" <-> "model.layers.N.y", or a global
// name. Empty when there is no counterpart (or the layer index is not below n_layers).
std::string map_name(const std::string& name, int64_t n_layers, bool to_hf) {
  for (const auto& [g, h] : kGlobalNames)
    if (name == (to_hf ? g : h)) return to_hf ? h : g;
  const std::string prefix = to_hf ? "blk." : "model.layers.";
  if (!name.starts_with(prefix)) return "";
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  const std::string num = name.substr(prefix.size(), dot - prefix.size());
  const bool canonical = !num.empty() && num.size() <= 9 && (num.size() == 1 || num[0] != '0') &&
                         std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!canonical || std::stoll(num) >= n_layers) return "";
  const std::string rest = name.substr(dot + 1);
  for (const auto& [g, h] : kLayerNames)
    if (rest == (to_hf ? g : h)) return (to_hf ? "model.layers." : "blk.") + num + "." + (to_hf ? h : g);
  return "";
}

// llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute) reorders q_proj/k_proj rows from
// transformers' rotate_half pairing (i, i + D/2) to Meta's interleaved pairing (2i, 2i+1):
// GGUF row h*D + 2i + j holds HF row h*D + j*D/2 + i. This puts them back, as
// transformers' own GGUF loader does (LlamaTensorProcessor._reverse_permute_weights).
Tensor unpermute_rope_rows(const Tensor& w, int64_t n_head) {
  const int64_t rows = w.dim(0), cols = w.dim(1), hd = rows / n_head, half = hd / 2;
  Tensor out = Tensor::empty(w.shape(), DType::f32);
  const float* src = w.data<float>();
  float* dst = out.data<float>();
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(dst + (h * hd + j * half + i) * cols, src + (h * hd + 2 * i + j) * cols,
                    size_t(cols) * sizeof(float));
  return out;
}
}  // namespace

LlamaConfig GgufFile::llama_config() const {
  const std::string arch = has("general.architecture") ? get_string("general.architecture") : "";
  LETHE_CHECK(arch == "llama", path_, ": key 'general.architecture' is '", arch,
              "'; lethe reads Llama-family GGUF files (architecture 'llama')");
  auto need = [&](const std::string& key) {
    LETHE_CHECK(has(key), path_, ": key '", key, "' is missing (needed for the Llama config)");
    return key;
  };
  LlamaConfig c;
  c.name = has("general.name") ? get_string("general.name") : fs::path(path_).stem().string();
  if (has("llama.vocab_size")) {
    c.vocab_size = get_int("llama.vocab_size");
  } else {
    need("tokenizer.ggml.tokens");
    LETHE_CHECK(array_type("tokenizer.ggml.tokens") == GgufType::string, path_,
                ": key 'tokenizer.ggml.tokens' is not an array of strings");
    c.vocab_size = int64_t(value("tokenizer.ggml.tokens").strings.size());
  }
  c.dim = get_int(need("llama.embedding_length"));
  c.n_layers = get_int(need("llama.block_count"));
  c.ffn_dim = uniform_int(*this, need("llama.feed_forward_length"));
  c.n_heads = uniform_int(*this, need("llama.attention.head_count"));
  c.n_kv_heads = has("llama.attention.head_count_kv") ? uniform_int(*this, "llama.attention.head_count_kv")
                                                      : c.n_heads;
  c.norm_eps = get_float(need("llama.attention.layer_norm_rms_epsilon"));
  if (has("llama.rope.freq_base")) c.rope_theta = get_float("llama.rope.freq_base");
  if (has("llama.context_length")) c.max_seq_len = get_int("llama.context_length");
  // head_dim: explicit key_length first, else the RoPE width; partial RoPE is not Llama.
  LETHE_CHECK(c.n_heads > 0, path_, ": key 'llama.attention.head_count' must be positive");
  int64_t hd = c.dim / c.n_heads;
  if (has("llama.attention.key_length")) hd = get_int("llama.attention.key_length");
  if (has("llama.attention.value_length"))
    LETHE_CHECK(get_int("llama.attention.value_length") == hd, path_,
                ": key 'llama.attention.value_length' differs from the head dimension ", hd);
  if (has("llama.rope.dimension_count")) {
    const int64_t rd = get_int("llama.rope.dimension_count");
    LETHE_CHECK(!has("llama.attention.key_length") || rd == hd, path_, ": key 'llama.rope.dimension_count' (",
                rd, ") differs from the head dimension ", hd, "; partial RoPE is not supported");
    hd = rd;
  }
  if (hd != c.dim / c.n_heads || c.dim % c.n_heads != 0) c.head_dim = hd;
  c.tie_embeddings = !has_tensor("output.weight");

  const std::string scaling = has("llama.rope.scaling.type") ? get_string("llama.rope.scaling.type") : "none";
  if (scaling == "linear") {
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = get_float(need("llama.rope.scaling.factor"));
  } else {
    LETHE_CHECK(scaling == "none", path_, ": key 'llama.rope.scaling.type' is '", scaling,
                "'; lethe supports none, linear, and Llama-3 scaling via rope_freqs.weight");
  }
  if (has_tensor("rope_freqs.weight")) {
    LETHE_CHECK(scaling == "none", path_, ": both 'llama.rope.scaling.type' ", scaling,
                " and tensor 'rope_freqs.weight' are present");
    const int64_t orig = has("llama.rope.scaling.original_context_length")
                             ? get_int("llama.rope.scaling.original_context_length")
                             : 8192;  // Llama-3.1/3.2's value, which the converter does not record
    c.rope_scaling = rope_from_freq_factors(*this, c.hd(), c.rope_theta, orig);
  }
  try {
    c.validate();
  } catch (const Error& e) {
    LETHE_FAIL(path_, ": the Llama config from its metadata is invalid: ", e.what());
  }
  return c;
}

GgufTokenizer GgufFile::tokenizer() const {
  GgufTokenizer t;
  LETHE_CHECK(has("tokenizer.ggml.tokens"), path_, ": no tokenizer (key 'tokenizer.ggml.tokens' is missing)");
  t.tokens = get_string_array("tokenizer.ggml.tokens");
  const size_t n = t.tokens.size();
  if (has("tokenizer.ggml.model")) t.model = get_string("tokenizer.ggml.model");
  if (has("tokenizer.ggml.pre")) t.pre = get_string("tokenizer.ggml.pre");
  if (has("tokenizer.ggml.scores")) {
    for (double s : get_float_array("tokenizer.ggml.scores")) t.scores.push_back(float(s));
    LETHE_CHECK(t.scores.size() == n, path_, ": key 'tokenizer.ggml.scores' has ", t.scores.size(),
                " entries for ", n, " tokens");
  }
  if (has("tokenizer.ggml.token_type")) {
    for (int64_t v : get_int_array("tokenizer.ggml.token_type")) {
      LETHE_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(), path_,
                  ": key 'tokenizer.ggml.token_type': value ", v, " does not fit int32");
      t.token_types.push_back(int32_t(v));
    }
    LETHE_CHECK(t.token_types.size() == n, path_, ": key 'tokenizer.ggml.token_type' has ", t.token_types.size(),
                " entries for ", n, " tokens");
  }
  if (has("tokenizer.ggml.merges")) t.merges = get_string_array("tokenizer.ggml.merges");
  auto id = [&](const char* key, int64_t& out) {
    if (!has(key)) return;
    out = get_int(key);
    LETHE_CHECK(out >= 0 && uint64_t(out) < n, path_, ": key '", key, "' is ", out, ", outside the ", n,
                " tokens");
  };
  id("tokenizer.ggml.bos_token_id", t.bos_id);
  id("tokenizer.ggml.eos_token_id", t.eos_id);
  id("tokenizer.ggml.padding_token_id", t.pad_id);
  id("tokenizer.ggml.unknown_token_id", t.unk_id);
  return t;
}

std::vector<std::pair<std::string, Tensor>> GgufFile::llama_weights() const {
  const LlamaConfig c = llama_config();
  std::map<std::string, std::string> gguf_of;  // transformers name -> GGUF name
  std::string unknown;
  for (const auto& t : tensors_) {
    if (t.name == "rope_freqs.weight") continue;  // folded into llama_config().rope_scaling
    const std::string hf = map_name(t.name, c.n_layers, true);
    if (hf.empty())
      unknown += (unknown.empty() ? "'" : ", '") + t.name + "'";
    else
      gguf_of[hf] = t.name;
  }
  LETHE_CHECK(unknown.empty(), path_, ": tensors with no counterpart in lethe's Llama (", c.n_layers,
              " layers, no biases): ", unknown);
  // Compare counts before listing the specs: a corrupt block_count must not size anything.
  const uint64_t want = 2 + 9 * uint64_t(c.n_layers) + (c.tie_embeddings ? 0 : 1);
  if (gguf_of.size() < want) {
    int64_t layers = 0;
    while (layers < c.n_layers && gguf_of.count("model.layers." + std::to_string(layers) + ".input_layernorm.weight"))
      ++layers;
    LETHE_CHECK(layers == c.n_layers, path_, ": key 'llama.block_count' is ", c.n_layers,
                " but tensor 'blk.", layers, ".attn_norm.weight' is missing");
  }
  std::vector<std::pair<std::string, Tensor>> out;
  for (const ParamSpec& p : llama_param_specs(c)) {
    auto it = gguf_of.find(p.name);
    LETHE_CHECK(it != gguf_of.end(), path_, ": tensor '", map_name(p.name, c.n_layers, false), "' (", p.name,
                ") is missing");
    Tensor w = tensor_f32(it->second);
    LETHE_CHECK(w.shape() == p.shape, path_, ": tensor '", it->second, "' is ", shape_str(w.shape()),
                " but the config makes ", p.name, " ", shape_str(p.shape));
    if (p.name.ends_with("self_attn.q_proj.weight")) w = unpermute_rope_rows(w, c.n_heads);
    if (p.name.ends_with("self_attn.k_proj.weight")) w = unpermute_rope_rows(w, c.n_kv_heads);
    out.emplace_back(p.name, std::move(w));
  }
  return out;
}

}  // namespace lethe
