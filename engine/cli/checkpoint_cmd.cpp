#include <iostream>

#include "engine/cli/commands.h"
#include "engine/io/checkpoint.h"
#include "engine/io/sha256.h"

namespace lethe::cli {

// `lethe checkpoint-info DIR`: verifies a checkpoint (marker, manifest, shard checksums)
// and prints its step, model and a SHA-256 digest per tensor group. Two checkpoints with
// the same digests hold bit-identical tensors, whatever their shard layout.
int checkpoint_info_main(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0] == "-h" || args[0] == "--help") {
    (args.size() == 1 ? std::cout : std::cerr) << "usage: lethe checkpoint-info DIR\n"
                 "  DIR is a checkpoint (step_NNNNNNNN) or a run directory (its newest complete checkpoint).\n";
    return args.size() == 1 ? 0 : 2;
  }
  std::string dir = args[0];
  if (!latest_checkpoint(dir).empty()) dir = latest_checkpoint(dir);
  const Checkpoint c = Checkpoint::open(dir);
  const auto& m = c.manifest();
  std::cout << "checkpoint: " << dir << "\n";
  if (m.contains("step")) std::cout << "step: " << m["step"] << "\n";
  if (m.contains("kind")) std::cout << "kind: " << m["kind"].get<std::string>() << "\n";
  if (m.contains("model")) std::cout << "model: " << m["model"].value("name", "?") << "\n";
  std::cout << "shards: " << m["shards"].size() << " (checksums verified)\n";
  std::map<std::string, std::vector<std::string>> groups;
  for (const char* g : {"weights", "optim_m", "optim_v"})
    for (const auto& n : c.names(g)) groups[g].push_back(n);
  for (const auto& [g, names] : groups) {
    // Digest over (name, shape, f32 bytes) in name order: independent of sharding.
    std::string buf;
    int64_t numel = 0;
    for (const auto& n : names) {
      const Tensor t = c.read(g, n, c.stored_dtype(g, n));
      buf += n + shape_str(t.shape()) + dtype_name(t.dtype());
      buf.append(static_cast<const char*>(t.raw()), t.nbytes());
      numel += t.numel();
    }
    std::cout << g << ": " << names.size() << " tensors, " << numel << " values, sha256 "
              << to_hex(sha256(buf.data(), buf.size())) << "\n";
  }
  return 0;
}

}  // namespace lethe::cli
