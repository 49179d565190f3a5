// Checkpoints: a directory holding manifest.json, HDF5 shard files, and a COMPLETE
// marker written last. Every tensor slice in a shard records its global shape and offset,
// so a reader can serve any slice of any tensor, whatever layout wrote it.
//
// Crash safety: everything is written under a staging name, fsynced, then renamed into
// place; the run directory's LATEST file is replaced atomically afterwards. A crash at
// any moment leaves the previous checkpoint intact and loadable. See docs/formats.md.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace lethe {

namespace h5 {
class File;
}

class CheckpointWriter {
 public:
  // Will become <run_dir>/<name>; stages in <run_dir>/.<name>.partial-<pid>. update_latest:
  // also point <run_dir>/LATEST at it (training runs; not for a standalone converted model).
  //
  // Several ranks (world > 1) write one checkpoint together: each its own shard_<rank>.h5
  // in the staging directory .<name>.partial-<tag> (tag: the same on every rank). Rank 0
  // constructs first (it creates the directory), the others after a barrier; every rank
  // calls finish_shard(), and after a barrier rank 0 calls commit(), which checksums every
  // rank's shard. Ordering the barriers is the caller's job (engine/io does not talk MPI).
  CheckpointWriter(const std::string& run_dir, const std::string& name, int rank = 0, bool update_latest = true,
                   int world = 1, const std::string& tag = "");
  ~CheckpointWriter();  // removes the staging directory unless committed
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // A whole tensor, or a slice of a larger one. One shard may hold several slices of the
  // same tensor (ZeRO-sharded optimizer state is cut at arbitrary elements).
  void add(const std::string& group, const std::string& name, const Tensor& t);
  void add_slice(const std::string& group, const std::string& name, const Tensor& slice, const Shape& global_shape,
                 const std::vector<int64_t>& offset);
  // A small non-tensor file (e.g. a tokenizer) stored beside the shards and checksummed
  // like them. name must be a plain file name.
  void add_file(const std::string& name, const std::string& content);
  // The caller's manifest fields (config, step, cursors, rng, metrics...).
  nlohmann::json& manifest() { return manifest_; }
  // Syncs, checksums and renames into place; returns the final directory.
  std::string commit();
  // Closes and syncs this rank's shard. Ranks other than 0 are done after it: the staging
  // directory is rank 0's to commit (or to leave behind if the job dies).
  void finish_shard();

 private:
  std::string run_dir_, name_, staging_, shard_name_;
  int rank_ = 0, world_ = 1;
  bool shard_done_ = false;
  bool leader() const { return world_ == 1 || rank_ == 0; }  // creates, commits, cleans up
  std::map<std::string, int> pieces_;  // slices written per tensor, for unique dataset names
  std::vector<std::string> files_;
  std::unique_ptr<h5::File> shard_;
  nlohmann::json manifest_;
  bool committed_ = false;
  bool update_latest_ = true;
};

class Checkpoint {
 public:
  // Verifies the COMPLETE marker, the manifest and every shard's SHA-256.
  static Checkpoint open(const std::string& dir);
  Checkpoint(Checkpoint&&) noexcept;
  ~Checkpoint();

  const std::string& dir() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  bool has(const std::string& group, const std::string& name) const;
  std::vector<std::string> names(const std::string& group) const;
  Shape global_shape(const std::string& group, const std::string& name) const;
  DType stored_dtype(const std::string& group, const std::string& name) const;
  // The whole tensor, or the box [offset, offset + shape), assembled from whichever shards
  // hold it and converted to dtype.
  Tensor read(const std::string& group, const std::string& name, DType dtype) const;
  Tensor read_slice(const std::string& group, const std::string& name, const std::vector<int64_t>& offset,
                    const Shape& shape, DType dtype) const;
  // A file stored with add_file (checksum verified at open), or an error naming it.
  bool has_file(const std::string& name) const;
  std::string read_file(const std::string& name) const;

 private:
  struct Piece {
    size_t file;
    std::string dset;
    Shape shape;
    std::vector<int64_t> offset;
    DType dtype;
  };
  struct Entry {
    Shape global_shape;
    std::vector<Piece> pieces;
  };
  Checkpoint() = default;
  const Entry& entry(const std::string& group, const std::string& name) const;

  std::string dir_;
  nlohmann::json manifest_;
  std::vector<std::unique_ptr<h5::File>> files_;
  std::map<std::string, Entry> entries_;  // "group/name"
};

// Newest complete checkpoint (step_NNNNNNNN) under run_dir, or "" when there is none.
// Incomplete ones (no COMPLETE marker: an interrupted save) are skipped with a warning.
std::string latest_checkpoint(const std::string& run_dir);
// Step directory name: step_00000042.
std::string checkpoint_name(int64_t step);
// Removes all but the newest `keep` complete checkpoints (keep <= 0 keeps all).
void prune_checkpoints(const std::string& run_dir, int64_t keep);

}  // namespace lethe
