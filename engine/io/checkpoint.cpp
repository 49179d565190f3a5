#include "engine/io/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "engine/core/log.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/sha256.h"

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
constexpr const char* kMarker = "COMPLETE";
constexpr const char* kManifest = "manifest.json";

void fsync_path(const std::string& p, bool dir) {
  const int fd = ::open(p.c_str(), dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  LETHE_CHECK(fd >= 0, p, ": cannot open to sync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  LETHE_CHECK(rc == 0, p, ": fsync failed: ", std::strerror(errno));
}

void write_file_synced(const std::string& p, const std::string& text) {
  {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    LETHE_CHECK(out.good(), p, ": cannot open for writing");
    out << text;
    out.flush();
    LETHE_CHECK(out.good(), p, ": write failed (disk full?)");
  }
  fsync_path(p, false);
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  LETHE_CHECK(in.good(), p, ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string key(const std::string& group, const std::string& name) { return group + "/" + name; }

bool is_step_dir(const fs::path& p) {
  static const std::regex re("step_[0-9]{8}");
  return std::regex_match(p.filename().string(), re);
}
}  // namespace

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", (long long)step);
  return buf;
}

// ---- writer -----------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(const std::string& run_dir, const std::string& name, int rank,
                                   bool update_latest, int world, const std::string& tag)
    : run_dir_(run_dir), name_(name), rank_(rank), world_(world), update_latest_(update_latest) {
  // A lone writer (world 1) may carry any rank: it names its shard after it.
  LETHE_CHECK(rank >= 0 && (world == 1 || rank < world), "checkpoint: rank ", rank, " of ", world);
  LETHE_CHECK(world == 1 || !tag.empty(), "checkpoint: a multi-rank save needs a tag shared by the ranks");
  std::error_code ec;
  staging_ = (fs::path(run_dir_) / ("." + name_ + ".partial-" + (tag.empty() ? std::to_string(::getpid()) : tag)))
                 .string();
  if (leader()) {
    fs::create_directories(run_dir_, ec);
    LETHE_CHECK(!ec, run_dir_, ": cannot create checkpoint directory: ", ec.message());
    fs::remove_all(staging_, ec);
    fs::create_directory(staging_, ec);
    LETHE_CHECK(!ec, staging_, ": cannot create: ", ec.message());
  } else {
    LETHE_CHECK(fs::is_directory(staging_, ec), staging_, ": rank 0 has not created the staging directory");
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "shard_%05d.h5", rank);
  shard_name_ = buf;
  shard_ = std::make_unique<h5::File>(h5::File::create((fs::path(staging_) / shard_name_).string()));
}

CheckpointWriter::~CheckpointWriter() {
  shard_.reset();
  if (!committed_ && leader()) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
}

void CheckpointWriter::add(const std::string& group, const std::string& name, const Tensor& t) {
  add_slice(group, name, t, t.shape(), std::vector<int64_t>(t.shape().size(), 0));
}

void CheckpointWriter::add_slice(const std::string& group, const std::string& name, const Tensor& slice,
                                 const Shape& global_shape, const std::vector<int64_t>& offset) {
  LETHE_CHECK(!committed_ && shard_, "checkpoint ", name_, ": add after commit");
  if (slice.device() != Device::cpu) {
    // Staged through host memory one tensor at a time. bf16 is widened to f32, as the CPU
    // emulation of the bf16 policy stores it, so the checkpoint of a device run is the
    // emulated run's, in today's format.
    Tensor host = slice.to(Device::cpu);
    if (host.dtype() == DType::bf16) host = host.to(DType::f32);
    return add_slice(group, name, host, global_shape, offset);
  }
  LETHE_CHECK(slice.ndim() == int(global_shape.size()) && offset.size() == global_shape.size(), "checkpoint: slice ",
              name, " rank does not match its global shape");
  for (size_t d = 0; d < global_shape.size(); ++d)
    LETHE_CHECK(offset[d] >= 0 && offset[d] + slice.shape()[d] <= global_shape[d], "checkpoint: slice ", name,
                " at offset ", offset[d], " leaves global shape ", shape_str(global_shape));
  // Later slices of a tensor in this shard get "@k" appended; readers strip it.
  const int k = pieces_[group + "/" + name]++;
  const std::string dset = "/" + group + "/" + name + (k ? "@" + std::to_string(k) : "");
  shard_->write_tensor(dset, slice);
  shard_->set_attr(dset, "global_shape", std::vector<int64_t>(global_shape.begin(), global_shape.end()));
  shard_->set_attr(dset, "offset", offset);
}

void CheckpointWriter::add_file(const std::string& name, const std::string& content) {
  LETHE_CHECK(fs::path(name).filename().string() == name && name != kManifest && name != kMarker &&
                  name.rfind("shard_", 0) != 0 && !name.empty() && name[0] != '.',
              "checkpoint: '", name, "' is not an allowed file name");
  write_file_synced((fs::path(staging_) / name).string(), content);
  files_.push_back(name);
}

void CheckpointWriter::finish_shard() {
  if (shard_done_) return;
  shard_->flush();
  shard_.reset();  // closes the file so its bytes are final
  const std::string path = (fs::path(staging_) / shard_name_).string();
  fsync_path(path, false);
  // Each rank hashes its own shard, in parallel with the others, and leaves the digest
  // beside it for rank 0's manifest: rank 0 hashing every shard alone took about a minute
  // for a 7B checkpoint while the other ranks waited in a collective.
  write_file_synced(path + ".sha256", to_hex(sha256_file(path)) + " " + std::to_string(fs::file_size(path)) + "\n");
  shard_done_ = true;
}

std::string CheckpointWriter::commit() {
  LETHE_CHECK(!committed_, "checkpoint ", name_, ": committed twice");
  LETHE_CHECK(leader(), "checkpoint ", name_, ": only rank 0 commits");
  finish_shard();
  json m = manifest_;
  m["format"] = "lethe-checkpoint";
  m["version"] = 1;
  m["shards"] = json::array();
  for (int r = 0; r < world_; ++r) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "shard_%05d.h5", world_ == 1 ? rank_ : r);
    const std::string shard_path = (fs::path(staging_) / buf).string();
    LETHE_CHECK(fs::is_regular_file(shard_path), shard_path, ": rank ", r, "'s shard is missing");
    const std::string digest_path = shard_path + ".sha256";
    LETHE_CHECK(fs::is_regular_file(digest_path), shard_path, ": rank ", r,
                " has not finished its shard (no digest beside it)");
    std::istringstream digest(slurp(digest_path));
    std::string hex;
    uintmax_t bytes = 0;
    digest >> hex >> bytes;
    LETHE_CHECK(hex.size() == 64 && bytes == fs::file_size(shard_path), digest_path, ": malformed digest, or ",
                shard_path, " changed after rank ", r, " finished it");
    m["shards"].push_back({{"file", buf}, {"bytes", bytes}, {"sha256", hex}});
    fs::remove(digest_path);
  }
  if (!files_.empty()) {
    m["files"] = json::array();
    for (const auto& f : files_) {
      const std::string p = (fs::path(staging_) / f).string();
      m["files"].push_back({{"file", f}, {"bytes", fs::file_size(p)}, {"sha256", to_hex(sha256_file(p))}});
    }
  }
  const std::string manifest_text = m.dump(2) + "\n";
  write_file_synced((fs::path(staging_) / kManifest).string(), manifest_text);
  // The marker holds the manifest's hash: a marker from another save cannot vouch for it.
  write_file_synced((fs::path(staging_) / kMarker).string(),
                    to_hex(sha256(manifest_text.data(), manifest_text.size())) + "\n");
  fsync_path(staging_, true);

  const fs::path final_dir = fs::path(run_dir_) / name_;
  std::error_code ec;
  fs::path old;
  if (fs::exists(final_dir)) {  // re-saving a step (a resumed run): swap, then drop the old one
    old = fs::path(run_dir_) / ("." + name_ + ".old-" + std::to_string(::getpid()));
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    LETHE_CHECK(!ec, final_dir.string(), ": cannot move aside: ", ec.message());
  }
  fs::rename(staging_, final_dir, ec);
  LETHE_CHECK(!ec, "cannot rename ", staging_, " to ", final_dir.string(), ": ", ec.message());
  fsync_path(run_dir_, true);
  if (update_latest_) {
    const std::string latest_tmp = (fs::path(run_dir_) / ".LATEST.tmp").string();
    write_file_synced(latest_tmp, name_ + "\n");
    fs::rename(latest_tmp, fs::path(run_dir_) / "LATEST", ec);
    LETHE_CHECK(!ec, run_dir_, ": cannot update LATEST: ", ec.message());
    fsync_path(run_dir_, true);
  }
  if (!old.empty()) fs::remove_all(old, ec);
  committed_ = true;
  return final_dir.string();
}

// ---- reader -----------------------------------------------------------------------------

Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  std::error_code ec;
  LETHE_CHECK(fs::is_directory(dir, ec), dir, ": no such checkpoint directory");
  const std::string marker = (fs::path(dir) / kMarker).string(), mpath = (fs::path(dir) / kManifest).string();
  LETHE_CHECK(fs::exists(marker, ec), dir, ": no ", kMarker, " marker: the save that wrote it did not finish");
  LETHE_CHECK(fs::exists(mpath, ec), mpath, ": missing");
  const std::string text = slurp(mpath);
  std::string expect = slurp(marker);
  while (!expect.empty() && (expect.back() == '\n' || expect.back() == ' ')) expect.pop_back();
  LETHE_CHECK(to_hex(sha256(text.data(), text.size())) == expect, mpath,
              ": does not match the hash in its COMPLETE marker (corrupt or edited manifest)");
  try {
    c.manifest_ = json::parse(text);
  } catch (const json::exception& e) {
    LETHE_FAIL(mpath, ": not valid JSON: ", e.what());
  }
  LETHE_CHECK(c.manifest_.value("format", "") == "lethe-checkpoint", mpath, ": format is not lethe-checkpoint");
  LETHE_CHECK(c.manifest_.value("version", 0) == 1, mpath, ": unsupported checkpoint version");
  LETHE_CHECK(c.manifest_.contains("shards") && c.manifest_["shards"].is_array() && !c.manifest_["shards"].empty(),
              mpath, ": no shards listed");
  for (const auto& s : c.manifest_["shards"]) {
    LETHE_CHECK(s.is_object() && s.contains("file") && s["file"].is_string() && s.contains("sha256") &&
                    s["sha256"].is_string(),
                mpath, ": malformed shard entry (needs a file name and a sha256 string)");
    const std::string file = s["file"].get<std::string>();
    // A manifest is input: a shard name must not climb out of the checkpoint.
    LETHE_CHECK(fs::path(file).filename().string() == file && file != "." && file != "..", mpath,
                ": shard name '", file, "' is not a plain file name");
    const std::string path = (fs::path(dir) / file).string();
    LETHE_CHECK(fs::is_regular_file(path, ec), path, ": shard listed in the manifest is missing");
    LETHE_CHECK(to_hex(sha256_file(path)) == s["sha256"].get<std::string>(), path,
                ": checksum mismatch (the shard is corrupt or was modified)");
    c.files_.push_back(std::make_unique<h5::File>(h5::File::open_read(path)));
    const h5::File& f = *c.files_.back();
    for (const std::string& group : f.list("/")) {
      for (const std::string& name : f.list("/" + group)) {
        const std::string dset = "/" + group + "/" + name;
        Piece p{c.files_.size() - 1, dset, f.shape(dset), f.attr_ints(dset, "offset"), DType::f32};
        p.dtype = f.dtype(dset);
        const auto gs = f.attr_ints(dset, "global_shape");
        LETHE_CHECK(gs.size() == p.shape.size() && p.offset.size() == p.shape.size(), path, ": '", dset,
                    "' has inconsistent global_shape/offset attributes");
        // Written as a difference: offset + shape could overflow for a crafted offset.
        for (size_t d = 0; d < gs.size(); ++d)
          LETHE_CHECK(p.offset[d] >= 0 && p.offset[d] <= gs[d] - p.shape[d], path, ": '", dset,
                      "' lies outside its global shape");
        // "name@k": the k-th slice of `name` in this shard.
        const size_t at = name.rfind('@');
        const std::string tensor = at == std::string::npos ? name : name.substr(0, at);
        Entry& e = c.entries_[key(group, tensor)];
        if (e.pieces.empty()) e.global_shape = Shape(gs.begin(), gs.end());
        LETHE_CHECK(e.global_shape == Shape(gs.begin(), gs.end()), path, ": '", dset,
                    "' disagrees with another shard about its global shape");
        e.pieces.push_back(p);
      }
    }
  }
  // Readers allocate a tensor's global shape, so it must be backed by data: a crafted
  // global_shape of 2^40 around a small slice would otherwise be a huge allocation.
  for (const auto& [k, e] : c.entries_) {
    uint64_t want = 1, have = 0;
    for (int64_t d : e.global_shape)
      LETHE_CHECK(!__builtin_mul_overflow(want, uint64_t(d), &want), dir, ": tensor '", k,
                  "' has an impossible global shape");
    for (const Piece& p : e.pieces) have += uint64_t(shape_numel(p.shape));
    LETHE_CHECK(have >= want, dir, ": tensor '", k, "' has global shape ", shape_str(e.global_shape), " (", want,
                " values) but its shards hold only ", have);
  }
  if (c.manifest_.contains("files")) {
    LETHE_CHECK(c.manifest_["files"].is_array(), mpath, ": 'files' is not a list");
    for (const auto& f : c.manifest_["files"]) {
      LETHE_CHECK(f.is_object() && f.contains("file") && f["file"].is_string() && f.contains("sha256") &&
                      f["sha256"].is_string(),
                  mpath, ": malformed file entry");
      const std::string file = f["file"].get<std::string>();
      LETHE_CHECK(fs::path(file).filename().string() == file && file != "." && file != "..", mpath, ": file name '",
                  file, "' is not a plain file name");
      const std::string path = (fs::path(dir) / file).string();
      LETHE_CHECK(fs::is_regular_file(path, ec), path, ": file listed in the manifest is missing");
      LETHE_CHECK(to_hex(sha256_file(path)) == f["sha256"].get<std::string>(), path, ": checksum mismatch");
    }
  }
  return c;
}

bool Checkpoint::has_file(const std::string& name) const {
  if (!manifest_.contains("files")) return false;
  for (const auto& f : manifest_["files"])
    if (f.value("file", "") == name) return true;
  return false;
}

std::string Checkpoint::read_file(const std::string& name) const {
  LETHE_CHECK(has_file(name), dir_, ": checkpoint has no file '", name, "'");
  return slurp((fs::path(dir_) / name).string());
}

const Checkpoint::Entry& Checkpoint::entry(const std::string& group, const std::string& name) const {
  auto it = entries_.find(key(group, name));
  LETHE_CHECK(it != entries_.end(), dir_, ": checkpoint has no tensor '", key(group, name), "'");
  return it->second;
}

bool Checkpoint::has(const std::string& group, const std::string& name) const {
  return entries_.count(key(group, name)) > 0;
}

std::vector<std::string> Checkpoint::names(const std::string& group) const {
  std::vector<std::string> out;
  const std::string prefix = group + "/";
  for (const auto& [k, e] : entries_)
    if (k.rfind(prefix, 0) == 0) out.push_back(k.substr(prefix.size()));
  return out;
}

Shape Checkpoint::global_shape(const std::string& group, const std::string& name) const {
  return entry(group, name).global_shape;
}

DType Checkpoint::stored_dtype(const std::string& group, const std::string& name) const {
  return entry(group, name).pieces.front().dtype;
}

Tensor Checkpoint::read(const std::string& group, const std::string& name, DType dtype) const {
  const Entry& e = entry(group, name);
  return read_slice(group, name, std::vector<int64_t>(e.global_shape.size(), 0), e.global_shape, dtype);
}

Tensor Checkpoint::read_slice(const std::string& group, const std::string& name, const std::vector<int64_t>& offset,
                              const Shape& shape, DType dtype) const {
  const Entry& e = entry(group, name);
  const size_t rank = e.global_shape.size();
  LETHE_CHECK(offset.size() == rank && shape.size() == rank, dir_, ": slice of '", name, "' has the wrong rank");
  for (size_t d = 0; d < rank; ++d)
    LETHE_CHECK(offset[d] >= 0 && shape[d] >= 0 && offset[d] + shape[d] <= e.global_shape[d], dir_, ": slice of '",
                name, "' lies outside its shape ", shape_str(e.global_shape));
  Tensor out = Tensor::zeros(shape, dtype);
  int64_t covered = 0;
  for (const Piece& p : e.pieces) {
    // Intersection of the requested box and this piece, in global coordinates.
    std::vector<int64_t> lo(rank), hi(rank);
    bool empty = false;
    for (size_t d = 0; d < rank; ++d) {
      lo[d] = std::max(offset[d], p.offset[d]);
      hi[d] = std::min(offset[d] + shape[d], p.offset[d] + p.shape[d]);
      empty |= lo[d] >= hi[d];
    }
    if (empty && rank > 0) continue;
    // Integers and floats do not convert into each other silently: weights stored as
    // integers are a corrupt or crafted checkpoint.
    LETHE_CHECK((p.dtype == DType::i32) == (dtype == DType::i32), dir_, ": '", name, "' is stored as ",
                dtype_name(p.dtype), ", cannot be read as ", dtype_name(dtype));
    // Only the intersection is read from the shard, in the piece's own coordinates.
    std::vector<int64_t> box_off(rank);
    Shape box(rank);
    for (size_t d = 0; d < rank; ++d) {
      box_off[d] = lo[d] - p.offset[d];
      box[d] = hi[d] - lo[d];
    }
    const Tensor src = files_[p.file]->read_tensor_box(p.dset, box_off, box).to(dtype);
    const size_t es = dtype_size(dtype);
    // Copy runs along the last dimension; iterate the others like an odometer.
    const int64_t run = rank ? hi[rank - 1] - lo[rank - 1] : 1;
    std::vector<int64_t> idx(lo);
    while (true) {
      int64_t so = 0, dof = 0;
      for (size_t d = 0; d < rank; ++d) {
        so = so * box[d] + (idx[d] - lo[d]);
        dof = dof * shape[d] + (idx[d] - offset[d]);
      }
      std::memcpy(static_cast<char*>(out.raw()) + dof * es, static_cast<const char*>(src.raw()) + so * es,
                  size_t(run) * es);
      covered += run;
      if (rank <= 1) break;
      size_t d = rank - 1;
      while (d > 0) {
        --d;
        if (++idx[d] < hi[d]) break;
        idx[d] = lo[d];
        if (d == 0) goto done;
      }
    }
  done:;
  }
  LETHE_CHECK(covered == out.numel(), dir_, ": the shards cover ", covered, " of the ", out.numel(),
              " elements requested from '", name, "'");
  return out;
}

// ---- run directories --------------------------------------------------------------------

std::string latest_checkpoint(const std::string& run_dir) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return "";
  std::vector<fs::path> steps;
  for (const auto& e : fs::directory_iterator(run_dir, ec))
    if (e.is_directory() && is_step_dir(e.path())) steps.push_back(e.path());
  std::sort(steps.rbegin(), steps.rend());
  for (const auto& p : steps) {
    if (fs::exists(p / kMarker)) return p.string();
    log::warn(p.string(), ": no ", kMarker, " marker (an interrupted save); using an earlier checkpoint");
  }
  return "";
}

void prune_checkpoints(const std::string& run_dir, int64_t keep) {
  if (keep <= 0) return;
  std::error_code ec;
  std::vector<fs::path> steps;
  for (const auto& e : fs::directory_iterator(run_dir, ec))
    if (e.is_directory() && is_step_dir(e.path()) && fs::exists(e.path() / kMarker)) steps.push_back(e.path());
  std::sort(steps.rbegin(), steps.rend());
  for (size_t i = size_t(keep); i < steps.size(); ++i) fs::remove_all(steps[i], ec);
}

}  // namespace lethe
