// A run's checkpoint on any process grid, the one writer `lethe train` and `lethe unlearn`
// share: each rank writes its shard of the weights (and of the optimizer state), rank 0
// the manifest, and rank 0 commits once every shard is on disk.
#pragma once
#include <functional>
#include <string>

#include "engine/io/checkpoint.h"
#include "engine/model/llama.h"
#include "engine/optim/run_optimizer.h"

namespace lethe {

// Writes <dir>/<name> from every rank of m's grid (call it on all of them): m's weights
// and, with opt, its optimizer moments, each rank its own shard; fill (rank 0 only) adds
// the manifest fields and small files before rank 0 commits. In one process it is a plain
// single-shard checkpoint. Returns the directory.
std::string save_checkpoint_all_ranks(const std::string& dir, const std::string& name, LlamaModel& m,
                                      RunOptimizer* opt, bool update_latest,
                                      const std::function<void(CheckpointWriter&)>& fill);

}  // namespace lethe
