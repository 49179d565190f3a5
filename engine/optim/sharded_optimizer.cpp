#include "engine/optim/sharded_optimizer.h"

#include <algorithm>
#include <cmath>

#include "kernels/optim.h"

namespace lethe {

ShardedOptimizer::ShardedOptimizer(ParamSet& params, ParamSet& grads, const OptimConfig& cfg, ProcessGrid& grid,
                                   int64_t bucket_elems)
    : params_(params), grads_(grads), cfg_(cfg), grid_(grid), zero1_(grid.zero1()) {
  cfg_.validate();
  LETHE_CHECK(params.numel() == grads.numel() && params.size() == grads.size(),
              "ShardedOptimizer: parameters and gradients differ in layout");
  const int64_t P = params.numel(), dp = grid.dp();
  const DType dt = params.flat().dtype();
  std::vector<int64_t> starts;
  for (size_t i = 0, off = 0; i < params.size(); off += size_t(params[i].numel()), ++i) starts.push_back(int64_t(off));
  if (zero1_) {
    const int64_t S = (P + dp - 1) / dp;
    padded_ = S * dp;
    shard_begin_ = std::min(P, S * grid.dp_rank());
    shard_size_ = std::min(P, shard_begin_ + S) - shard_begin_;
    pad_ = Tensor::zeros({padded_}, dt);
    gshard_ = Tensor::zeros({S}, dt);
    master_ = Tensor::zeros({S}, dt);
  } else {
    shard_begin_ = 0;
    shard_size_ = P;
    master_ = params.flat();
    gshard_ = grads.flat();
    if (dp > 1) reducer_ = std::make_unique<GradReducer>(grads.flat(), starts, grid.dp_group(), bucket_elems);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t lo = std::max(starts[i], shard_begin_), hi = std::min(starts[i] + params[i].numel(),
                                                                        shard_begin_ + shard_size_);
    if (hi > lo) pieces_.push_back({i, lo - starts[i], lo - shard_begin_, hi - lo});
  }
  const int64_t n = master_.numel();
  if (cfg_.type == "adamw") {
    m_ = Tensor::zeros({n}, dt);
    v_ = Tensor::zeros({n}, dt);
  } else if (cfg_.momentum != 0) {
    m_ = Tensor::zeros({n}, dt);
  }
  params_changed();
}

void ShardedOptimizer::set_trainable(std::vector<bool> trainable) {
  LETHE_CHECK(trainable.size() == params_.size(), "set_trainable: ", trainable.size(), " flags for ", params_.size(),
              " parameters");
  trainable_ = std::move(trainable);
}

void ShardedOptimizer::params_changed() {
  if (zero1_) master_.view(0, {shard_size_}).copy_from(params_.flat().view(shard_begin_, {shard_size_}));
}

void ShardedOptimizer::grad_ready(size_t first) {
  if (reducer_) reducer_->ready_from(first);
}

double ShardedOptimizer::global_norm() {
  // A parameter every tp rank holds whole (norm weights; replicated k/v) has the same
  // gradient on each: count it on tp rank 0 only.
  double ss = 0;
  for (const Piece& p : pieces_) {
    if (!params_.spec(p.param).sharded() && grid_.tp_rank() != 0) continue;
    ss += ops::sum_squares(gshard_.view(p.shard_begin, {p.count}));
  }
  // ZeRO shards are disjoint over dp; without ZeRO every dp rank holds the same sum.
  ss = (zero1_ ? grid_.world() : grid_.tp_group()).all_reduce(ss, ReduceOp::sum);
  return std::sqrt(ss);
}

double ShardedOptimizer::step(double lr) {
  LETHE_CHECK(std::isfinite(lr) && lr >= 0, "learning rate must be finite and >= 0, got ", lr);
  if (!trainable_.empty())
    for (size_t i = 0; i < params_.size(); ++i)
      if (!trainable_[i]) grads_[i].zero_();
  const int64_t P = params_.numel();
  if (zero1_) {
    pad_.view(0, {P}).copy_from(grads_.flat());
    grid_.dp_group().reduce_scatter(pad_, gshard_);
  } else if (reducer_) {
    reducer_->finish();
  }
  const double norm = global_norm();
  LETHE_CHECK(std::isfinite(norm), "gradient norm is ", norm, "; refusing to update the weights");
  if (cfg_.grad_clip > 0) {
    const double f = cfg_.grad_clip / (norm + 1e-6);
    if (f < 1) ops::scale_(gshard_, f);
  }
  ++step_;
  for (const Piece& p : pieces_) {
    if (!trainable_.empty() && !trainable_[p.param]) continue;
    const double wd = params_[p.param].ndim() >= 2 ? cfg_.weight_decay : 0.0;
    Tensor w = master_.view(p.shard_begin, {p.count}), g = gshard_.view(p.shard_begin, {p.count});
    if (cfg_.type == "adamw") {
      Tensor m = m_.view(p.shard_begin, {p.count}), v = v_.view(p.shard_begin, {p.count});
      ops::adamw_update(w, g, m, v, {lr, cfg_.beta1, cfg_.beta2, cfg_.eps, wd, step_});
    } else {
      Tensor buf = m_.defined() ? m_.view(p.shard_begin, {p.count}) : Tensor();
      ops::sgd_update(w, g, buf, {lr, cfg_.momentum, wd, step_ == 1});
    }
  }
  if (zero1_) {
    const int64_t S = gshard_.numel();
    Tensor mine = pad_.view(int64_t(grid_.dp_rank()) * S, {S});
    mine.copy_from(master_);
    grid_.dp_group().all_gather(mine, pad_);
    params_.flat().copy_from(pad_.view(0, {P}));
  }
  return norm;
}

}  // namespace lethe
