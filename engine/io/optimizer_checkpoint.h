// A run's optimizer state in a checkpoint, the same for `lethe train` and `lethe unlearn`:
// groups optim_m and optim_v (AdamW moments, or SGD momentum in optim_m) and, for a bf16
// run, optim_master (the fp32 master weights; the checkpoint's "weights" are only their
// rounding to bf16, so a resume from the weights alone would lose every update smaller
// than half a bf16 step). Under a grid each rank writes its ZeRO shard or tp slice, and
// any layout reads any other back.
#pragma once
#include <string>

#include "engine/io/checkpoint.h"
#include "engine/model/param_set.h"
#include "engine/optim/run_optimizer.h"

namespace lethe {

// Call on every rank, between the writer's creation and finish_shard().
void add_optimizer_state(CheckpointWriter& w, RunOptimizer& opt, const ParamSet& params, const ProcessGrid& grid);

// After `params` were loaded from the same checkpoint. A bf16 run needs optim_master;
// its absence is an error naming the checkpoint (`where`).
void load_optimizer_state(const Checkpoint& ck, RunOptimizer& opt, const ParamSet& params, const std::string& where);

// A fresh bf16 run started from a checkpoint's weights (train.init_from): the fp32 master
// from the weights as stored, not from the model's bf16 rounding of them (on a device the
// model holds that rounding from the load on; the CPU emulation only at its first forward).
// Does nothing under f32.
void load_master_weights(const Checkpoint& ck, RunOptimizer& opt, const ParamSet& params);

// The precision recorded in a manifest ("f32" for checkpoints written before the key
// existed); a resume in another precision is refused, naming the key that chose it.
void check_resume_precision(const nlohmann::json& manifest, Precision run, const std::string& where,
                            const std::string& key);

}  // namespace lethe
