#include "engine/io/optimizer_checkpoint.h"

#include "engine/io/model_checkpoint.h"

namespace lethe {

void add_optimizer_state(CheckpointWriter& w, RunOptimizer& opt, const ParamSet& params, const ProcessGrid& grid) {
  const bool bf16 = opt.precision() == Precision::bf16;
  if (opt.one) {
    Optimizer& o = *opt.one;
    if (o.m().size()) add_params(w, "optim_m", o.m());
    if (o.v().size()) add_params(w, "optim_v", o.v());
    if (bf16) add_params(w, "optim_master", o.master());
    return;
  }
  // Optimizer state from every rank holding a ZeRO shard (or, without ZeRO, from dp rank 0
  // as the weights); a tensor every tp rank holds whole, from tp rank 0 only.
  ShardedOptimizer& o = *opt.par;
  const bool tp0 = grid.tp_rank() == 0, dp0 = grid.dp_rank() == 0;
  auto mine = [&](const ParamSpec& s) { return (o.zero1() || dp0) && (s.sharded() || tp0); };
  if (o.has_m()) add_optimizer_shard(w, "optim_m", o, o.m(), params, mine);
  if (o.has_v()) add_optimizer_shard(w, "optim_v", o, o.v(), params, mine);
  if (bf16) add_optimizer_shard(w, "optim_master", o, o.master(), params, mine);
}

void load_optimizer_state(const Checkpoint& ck, RunOptimizer& opt, const ParamSet& params, const std::string& where) {
  const bool bf16 = opt.precision() == Precision::bf16;
  LETHE_CHECK(!bf16 || !ck.names("optim_master").empty(), where,
              ": holds no fp32 master weights (group optim_master), which a bf16 run resumes from");
  opt.params_changed();
  if (opt.one) {
    Optimizer& o = *opt.one;
    if (o.m().size()) load_params(ck, "optim_m", o.m());
    if (o.v().size()) load_params(ck, "optim_v", o.v());
    if (bf16) {
      load_params(ck, "optim_master", o.master());
      o.master_changed();
    }
    return;
  }
  ShardedOptimizer& o = *opt.par;
  if (o.has_m()) load_optimizer_shard(ck, "optim_m", o, o.m(), params);
  if (o.has_v()) load_optimizer_shard(ck, "optim_v", o, o.v(), params);
  // The checkpoint's weights are this master rounded to bf16, so the weights the grid
  // loaded already agree with it.
  if (bf16) load_optimizer_shard(ck, "optim_master", o, o.master(), params);
}

void load_master_weights(const Checkpoint& ck, RunOptimizer& opt, const ParamSet& params) {
  if (opt.precision() != Precision::bf16) return;
  if (opt.one) load_params(ck, "weights", opt.one->master());
  else load_optimizer_shard(ck, "weights", *opt.par, opt.par->master(), params);
}

void check_resume_precision(const nlohmann::json& manifest, Precision run, const std::string& where,
                            const std::string& key) {
  const std::string saved = manifest.contains("precision") && manifest["precision"].is_string()
                                ? manifest["precision"].get<std::string>()
                                : "f32";
  LETHE_CHECK(saved == precision_name(run), where, ": the run was started in ", saved, " precision and ", key,
              " asks for ", precision_name(run), "; a run resumes only in the precision it started in");
}

}  // namespace lethe
