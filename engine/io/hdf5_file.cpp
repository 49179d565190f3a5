#include "engine/io/hdf5_file.h"

#include <hdf5.h>

#include <utility>

#include <cstring>
#include <filesystem>
#include <mutex>

#include "engine/io/untrusted_read.h"

namespace lethe::h5 {
namespace {

void quiet() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

// Closes an HDF5 handle with the right function when it leaves scope.
struct Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~Handle() {
    if (id >= 0) close(id);
  }
  Handle(const Handle&) = delete;
  operator hid_t() const { return id; }
};

Handle open_dset(hid_t file, const std::string& path, const std::string& name) {
  LETHE_CHECK(H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0, path, ": no dataset '", name, "'");
  const hid_t d = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  LETHE_CHECK(d >= 0, path, ": cannot open dataset '", name, "'");
  return Handle(d, H5Dclose);
}

Shape dset_shape(hid_t d, const std::string& path, const std::string& name) {
  Handle sp(H5Dget_space(d), H5Sclose);
  LETHE_CHECK(sp.id >= 0, path, ": cannot read the shape of '", name, "'");
  const int rank = H5Sget_simple_extent_ndims(sp);
  LETHE_CHECK(rank >= 0 && rank <= 8, path, ": dataset '", name, "' has unsupported rank ", rank);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
  Shape s;
  // Bounded so that numel * 8 bytes cannot overflow anywhere downstream.
  uint64_t numel = 1;
  for (hsize_t d2 : dims) {
    LETHE_CHECK(!__builtin_mul_overflow(numel, uint64_t(d2), &numel) && numel <= (uint64_t(1) << 59), path,
                ": dataset '", name, "' declares an impossible number of elements");
    s.push_back(int64_t(d2));
  }
  return s;
}

// A declared shape is input too: a chunked dataset can claim terabytes and store nothing.
// Refuse to allocate far more than the file holds (1024x leaves room for compression).
void check_stored(hid_t d, const std::string& path, const std::string& name, uint64_t nbytes) {
  if (nbytes <= (uint64_t(64) << 20)) return;
  const uint64_t stored = H5Dget_storage_size(d);
  LETHE_CHECK(nbytes / 1024 <= stored, path, ": dataset '", name, "' declares ", nbytes,
              " bytes but the file stores only ", stored, " (truncated, corrupt or crafted)");
}

template <typename T>
std::vector<T> read_all(hid_t file, const std::string& path, const std::string& name, hid_t memtype) {
  Handle d = open_dset(file, path, name);
  const Shape s = dset_shape(d, path, name);
  Handle ft(H5Dget_type(d), H5Tclose);
  LETHE_CHECK(H5Tget_class(ft) == H5T_INTEGER || H5Tget_class(ft) == H5T_FLOAT, path, ": dataset '", name,
              "' is not numeric");
  check_stored(d, path, name, uint64_t(shape_numel(s)) * sizeof(T));
  std::vector<T> out(size_t(shape_numel(s)));
  if (!out.empty())
    LETHE_CHECK(H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0, path,
                ": cannot read dataset '", name, "' (truncated or corrupt file?)");
  return out;
}

Handle open_obj(hid_t file, const std::string& path, const std::string& obj) {
  LETHE_CHECK(obj == "/" || H5Lexists(file, obj.c_str(), H5P_DEFAULT) > 0, path, ": no object '", obj, "'");
  hid_t o = H5Oopen(file, obj.c_str(), H5P_DEFAULT);
  LETHE_CHECK(o >= 0, path, ": cannot open '", obj, "'");
  return Handle(o, H5Oclose);
}

Handle open_attr(hid_t file, const std::string& path, const std::string& obj, const std::string& name) {
  Handle o = open_obj(file, path, obj);
  LETHE_CHECK(H5Aexists(o, name.c_str()) > 0, path, ": '", obj, "' has no attribute '", name, "'");
  hid_t a = H5Aopen(o, name.c_str(), H5P_DEFAULT);
  LETHE_CHECK(a >= 0, path, ": cannot open attribute '", name, "' of '", obj, "'");
  return Handle(a, H5Aclose);
}

void replace_attr(hid_t file, const std::string& path, const std::string& obj, const std::string& name,
                  hid_t type, hid_t space, const void* data) {
  Handle o = open_obj(file, path, obj);
  if (H5Aexists(o, name.c_str()) > 0) H5Adelete(o, name.c_str());
  Handle a(H5Acreate2(o, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  LETHE_CHECK(a.id >= 0 && H5Awrite(a, type, data) >= 0, path, ": cannot write attribute '", name, "'");
}

void write_dset(hid_t file, const std::string& path, const std::string& name, hid_t memtype, const Shape& shape,
                const void* data) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle sp(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(file, name.c_str(), H5P_DEFAULT);
  Handle d(H5Dcreate2(file, name.c_str(), memtype, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  LETHE_CHECK(d.id >= 0, path, ": cannot create dataset '", name, "'");
  if (shape_numel(shape) > 0)
    LETHE_CHECK(H5Dwrite(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, path, ": cannot write '", name, "'");
}
}  // namespace

File File::open_read(const std::string& path) {
  quiet();
  std::error_code ec;
  LETHE_CHECK(std::filesystem::is_regular_file(path, ec), path, ": no such file");
  const int64_t bytes = int64_t(std::filesystem::file_size(path, ec));
  const UntrustedRead deadline(path, bytes);
  LETHE_CHECK(H5Fis_hdf5(path.c_str()) > 0, path, ": not an HDF5 file (truncated or corrupt?)");
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  LETHE_CHECK(id >= 0, path, ": cannot open as HDF5 (truncated or corrupt?)");
  return File(id, path, bytes);
}

File File::create(const std::string& path) {
  quiet();
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  LETHE_CHECK(id >= 0, path, ": cannot create HDF5 file");
  return File(id, path, 0);
}

File::File(File&& o) noexcept : id_(o.id_), path_(std::move(o.path_)), bytes_(o.bytes_) { o.id_ = -1; }
File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = o.id_;
    path_ = std::move(o.path_);
    o.id_ = -1;
  }
  return *this;
}
File::~File() {
  if (id_ >= 0) H5Fclose(id_);
}

bool File::exists(const std::string& obj) const {
  const UntrustedRead deadline(path_, bytes_);
  // Check each level: H5Lexists fails on a path whose parent is missing.
  std::string partial;
  size_t pos = 1;
  while (pos <= obj.size()) {
    const size_t next = obj.find('/', pos);
    partial = obj.substr(0, next == std::string::npos ? obj.size() : next);
    if (H5Lexists(id_, partial.c_str(), H5P_DEFAULT) <= 0) return false;
    if (next == std::string::npos) break;
    pos = next + 1;
  }
  return true;
}

std::vector<std::string> File::list(const std::string& group) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle g(H5Gopen2(id_, group.c_str(), H5P_DEFAULT), H5Gclose);
  LETHE_CHECK(g.id >= 0, path_, ": no group '", group, "'");
  H5G_info_t info;
  H5Gget_info(g, &info);
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    std::string s(size_t(std::max<ssize_t>(n, 0)), '\0');
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size() + 1, H5P_DEFAULT);
    names.push_back(s);
  }
  return names;
}

Shape File::shape(const std::string& dset) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle d = open_dset(id_, path_, dset);
  const Shape s = dset_shape(d, path_, dset);
  Handle ft(H5Dget_type(d), H5Tclose);
  check_stored(d, path_, dset, uint64_t(shape_numel(s)) * H5Tget_size(ft));
  return s;
}

std::vector<int64_t> File::read_i64(const std::string& d) const {
  const UntrustedRead deadline(path_, bytes_);
  return read_all<int64_t>(id_, path_, d, H5T_NATIVE_INT64);
}
std::vector<int32_t> File::read_i32(const std::string& d) const {
  const UntrustedRead deadline(path_, bytes_);
  return read_all<int32_t>(id_, path_, d, H5T_NATIVE_INT32);
}
std::vector<uint8_t> File::read_u8(const std::string& d) const {
  const UntrustedRead deadline(path_, bytes_);
  return read_all<uint8_t>(id_, path_, d, H5T_NATIVE_UINT8);
}

namespace {
// The lethe dtype a dataset is read as, and the in-memory HDF5 type that reads it.
std::pair<DType, hid_t> stored_type(const File& f, hid_t d, const std::string& name) {
  Handle ft(H5Dget_type(d), H5Tclose);
  const H5T_class_t cls = H5Tget_class(ft);
  const size_t size = H5Tget_size(ft);
  if (cls == H5T_FLOAT && size == 4) return {DType::f32, H5T_NATIVE_FLOAT};
  if (cls == H5T_FLOAT && size == 8) return {DType::f64, H5T_NATIVE_DOUBLE};
  if (cls == H5T_INTEGER && size == 2 && f.has_attr(name, "dtype")) {
    const std::string tag = f.attr_string(name, "dtype");
    if (tag == "bf16") return {DType::bf16, H5T_NATIVE_UINT16};
    if (tag == "f16") return {DType::f16, H5T_NATIVE_UINT16};
  }
  if (cls == H5T_INTEGER && size <= 4) return {DType::i32, H5T_NATIVE_INT32};
  LETHE_FAIL(f.path(), ": dataset '", name, "' has a type lethe does not read as a tensor");
}
}  // namespace

bool File::is_integer(const std::string& name) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle d = open_dset(id_, path_, name);
  Handle ft(H5Dget_type(d), H5Tclose);
  return H5Tget_class(ft) == H5T_INTEGER;
}

DType File::dtype(const std::string& name) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle d = open_dset(id_, path_, name);
  return stored_type(*this, d, name).first;
}

Tensor File::read_tensor(const std::string& name) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle d = open_dset(id_, path_, name);
  const Shape s = dset_shape(d, path_, name);
  const auto [dt, mem] = stored_type(*this, d, name);
  check_stored(d, path_, name, uint64_t(shape_numel(s)) * dtype_size(dt));
  Tensor t = Tensor::empty(s, dt);
  if (t.numel() > 0)
    LETHE_CHECK(H5Dread(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw()) >= 0, path_, ": cannot read dataset '",
                name, "' (truncated or corrupt file?)");
  return t;
}

Tensor File::read_tensor_box(const std::string& name, const std::vector<int64_t>& offset, const Shape& box) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle d = open_dset(id_, path_, name);
  const Shape s = dset_shape(d, path_, name);
  LETHE_CHECK(offset.size() == s.size() && box.size() == s.size(), path_, ": box of '", name, "' has the wrong rank");
  for (size_t i = 0; i < s.size(); ++i)
    LETHE_CHECK(offset[i] >= 0 && box[i] >= 0 && offset[i] + box[i] <= s[i], path_, ": box of '", name,
                "' lies outside its shape ", shape_str(s));
  const auto [dt, mem] = stored_type(*this, d, name);
  check_stored(d, path_, name, uint64_t(shape_numel(s)) * dtype_size(dt));
  Tensor t = Tensor::empty(box, dt);
  if (t.numel() == 0) return t;
  if (s.empty()) {  // a scalar is its own box
    LETHE_CHECK(H5Dread(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw()) >= 0, path_, ": cannot read dataset '", name,
                "'");
    return t;
  }
  // Only the box's bytes are read: a rank reading its slice of a tensor another layout
  // wrote whole does not read the whole tensor.
  Handle fspace(H5Dget_space(d), H5Sclose);
  const std::vector<hsize_t> start(offset.begin(), offset.end()), count(box.begin(), box.end());
  LETHE_CHECK(fspace.id >= 0 &&
                  H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) >= 0,
              path_, ": cannot select a box of '", name, "'");
  Handle mspace(H5Screate_simple(int(count.size()), count.data(), nullptr), H5Sclose);
  LETHE_CHECK(mspace.id >= 0 && H5Dread(d, mem, mspace, fspace, H5P_DEFAULT, t.raw()) >= 0, path_,
              ": cannot read dataset '", name, "' (truncated or corrupt file?)");
  return t;
}

void File::write_tensor(const std::string& name, const Tensor& t) {
  check_cpu(t, "h5::File::write_tensor", name.c_str());
  hid_t mem = t.dtype() == DType::f32    ? H5T_NATIVE_FLOAT
              : t.dtype() == DType::f64  ? H5T_NATIVE_DOUBLE
              : t.dtype() == DType::bf16 || t.dtype() == DType::f16 ? H5T_NATIVE_UINT16
                                         : H5T_NATIVE_INT32;
  write_dset(id_, path_, name, mem, t.shape(), t.raw());
  // 16-bit floats are stored as their bit patterns; the attribute says which format.
  if (t.dtype() == DType::bf16 || t.dtype() == DType::f16) set_attr(name, "dtype", std::string(dtype_name(t.dtype())));
}

void File::write_i64(const std::string& name, const std::vector<int64_t>& v) {
  write_dset(id_, path_, name, H5T_NATIVE_INT64, {int64_t(v.size())}, v.data());
}

void File::write_u8(const std::string& name, const std::vector<uint8_t>& v, const Shape& shape) {
  LETHE_CHECK(shape_numel(shape) == int64_t(v.size()), "write_u8: size mismatch for ", name);
  write_dset(id_, path_, name, H5T_NATIVE_UINT8, shape, v.data());
}

bool File::has_attr(const std::string& obj, const std::string& name) const {
  const UntrustedRead deadline(path_, bytes_);
  if (obj != "/" && !exists(obj)) return false;
  Handle o = open_obj(id_, path_, obj);
  return H5Aexists(o, name.c_str()) > 0;
}

std::string File::attr_string(const std::string& obj, const std::string& name) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle a = open_attr(id_, path_, obj, name);
  Handle t(H5Aget_type(a), H5Tclose);
  LETHE_CHECK(H5Tget_class(t) == H5T_STRING, path_, ": attribute '", name, "' of '", obj, "' is not a string");
  if (H5Tis_variable_str(t) > 0) {
    Handle mt(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, H5Tget_cset(t));
    char* p = nullptr;
    LETHE_CHECK(H5Aread(a, mt, &p) >= 0, path_, ": cannot read attribute '", name, "'");
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  const size_t n = H5Tget_size(t);
  LETHE_CHECK(n < (1u << 20), path_, ": attribute '", name, "' is implausibly long");
  std::string s(n, '\0');
  Handle mt(H5Tcopy(t), H5Tclose);
  LETHE_CHECK(H5Aread(a, mt, s.data()) >= 0, path_, ": cannot read attribute '", name, "'");
  s.resize(strnlen(s.data(), n));
  return s;
}

std::vector<int64_t> File::attr_ints(const std::string& obj, const std::string& name) const {
  const UntrustedRead deadline(path_, bytes_);
  Handle a = open_attr(id_, path_, obj, name);
  Handle t(H5Aget_type(a), H5Tclose);
  LETHE_CHECK(H5Tget_class(t) == H5T_INTEGER, path_, ": attribute '", name, "' of '", obj, "' is not an integer");
  Handle sp(H5Aget_space(a), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(sp);
  LETHE_CHECK(n >= 0 && n < (1 << 20), path_, ": attribute '", name, "' has a bad size");
  std::vector<int64_t> v(static_cast<size_t>(n));
  if (n > 0) LETHE_CHECK(H5Aread(a, H5T_NATIVE_INT64, v.data()) >= 0, path_, ": cannot read attribute '", name, "'");
  return v;
}

int64_t File::attr_int(const std::string& obj, const std::string& name) const {
  const auto v = attr_ints(obj, name);
  LETHE_CHECK(v.size() == 1, path_, ": attribute '", name, "' of '", obj, "' is not a single integer");
  return v[0];
}

void File::set_attr(const std::string& obj, const std::string& name, const std::string& value) {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t, std::max<size_t>(1, value.size()));
  H5Tset_cset(t, H5T_CSET_UTF8);
  Handle sp(H5Screate(H5S_SCALAR), H5Sclose);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  replace_attr(id_, path_, obj, name, t, sp, padded.data());
}

void File::set_attr(const std::string& obj, const std::string& name, int64_t value) {
  Handle sp(H5Screate(H5S_SCALAR), H5Sclose);
  replace_attr(id_, path_, obj, name, H5T_NATIVE_INT64, sp, &value);
}

void File::set_attr(const std::string& obj, const std::string& name, const std::vector<int64_t>& value) {
  hsize_t n = value.size();
  Handle sp(H5Screate_simple(1, &n, nullptr), H5Sclose);
  replace_attr(id_, path_, obj, name, H5T_NATIVE_INT64, sp, value.data());
}

void File::ensure_group(const std::string& group) {
  if (group == "/" || exists(group)) return;
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  Handle g(H5Gcreate2(id_, group.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  LETHE_CHECK(g.id >= 0, path_, ": cannot create group '", group, "'");
}

void File::flush() { H5Fflush(id_, H5F_SCOPE_GLOBAL); }

}  // namespace lethe::h5
