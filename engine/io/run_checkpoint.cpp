#include "engine/io/run_checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <memory>

#include "engine/io/model_checkpoint.h"
#include "engine/io/optimizer_checkpoint.h"
#include "engine/parallel/grid.h"

namespace lethe {

std::string save_checkpoint_all_ranks(const std::string& dir, const std::string& name, LlamaModel& m,
                                      RunOptimizer* opt, bool update_latest,
                                      const std::function<void(CheckpointWriter&)>& fill) {
  ProcessGrid& g = m.grid();
  if (!g.parallel()) {
    CheckpointWriter w(dir, name, 0, update_latest);
    add_params(w, "weights", m.params());
    if (opt) add_optimizer_state(w, *opt, m.params(), g);
    fill(w);
    return w.commit();
  }
  // Weights from dp rank 0 of each tp group (a tensor every tp rank holds
  // whole from tp rank 0 only), optimizer state from every rank holding a ZeRO shard.
  const bool tp0 = g.tp_rank() == 0, dp0 = g.dp_rank() == 0;
  auto mine = [&](const ParamSpec& s) { return dp0 && (s.sharded() || tp0); };
  const std::string tag =
      std::to_string(g.world().all_reduce(int64_t(g.rank() == 0 ? ::getpid() : 0), ReduceOp::max));
  std::unique_ptr<CheckpointWriter> w;
  if (g.rank() == 0) w = std::make_unique<CheckpointWriter>(dir, name, 0, update_latest, g.world_size(), tag);
  g.world().barrier();
  if (g.rank() != 0)
    w = std::make_unique<CheckpointWriter>(dir, name, g.rank(), update_latest, g.world_size(), tag);
  add_params(*w, "weights", m.params(), mine);
  if (opt) add_optimizer_state(*w, *opt, m.params(), g);
  w->finish_shard();
  g.world().barrier();
  std::string out = (std::filesystem::path(dir) / name).string();
  if (g.rank() == 0) {
    fill(*w);
    out = w->commit();
  }
  g.world().barrier();  // nobody reads or prunes before the rename
  return out;
}

}  // namespace lethe
