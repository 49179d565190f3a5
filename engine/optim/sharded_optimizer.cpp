#include "engine/optim/sharded_optimizer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>

#include "kernels/optim.h"

namespace lethe {

ShardedOptimizer::ShardedOptimizer(ParamSet& params, ParamSet& grads, const OptimConfig& cfg, ProcessGrid& grid,
                                   int64_t bucket_elems, Precision precision)
    : params_(params), grads_(grads), cfg_(cfg), grid_(grid), zero1_(grid.zero1()), precision_(precision) {
  cfg_.validate();
  const Device dev = params.flat().device();
  LETHE_CHECK(precision_ == Precision::f32 || params.flat().dtype() == (dev == Device::cpu ? DType::f32 : DType::bf16),
              "the bf16 policy keeps f32 parameters holding bf16 values on the CPU and bf16 parameters on a device, "
              "got ", params.flat().describe());
  LETHE_CHECK(params.numel() == grads.numel() && params.size() == grads.size(),
              "ShardedOptimizer: parameters and gradients differ in layout");
  const int64_t P = params.numel(), dp = grid.dp(), d = grid.dp_rank();
  // Gradients, shards, master and moments: the gradients' dtype (f32 under the bf16 policy
  // on a device, where the weights are bf16), on the parameters' device.
  const DType dt = grads.flat().dtype();
  for (size_t i = 0, off = 0; i < params.size(); off += size_t(params[i].numel()), ++i) starts_.push_back(int64_t(off));
  // The part of the flat buffer this rank updates, as [begin, end) ranges mapped to
  // consecutive positions of the shard buffers.
  std::vector<std::pair<int64_t, int64_t>> owned;
  int64_t shard = 0;
  if (zero1_) {
    // Buckets cut from the end of the buffer at parameter boundaries; each is split over dp
    // (padded to a multiple of dp), so it can be reduce-scattered as soon as the backward
    // has finished it. Rank d owns chunk d of every bucket.
    int64_t hi = P, padded = 0;
    size_t p = starts_.size();
    while (p > 0) {
      size_t lo = p - 1;
      while (lo > 0 && hi - starts_[lo] < bucket_elems) --lo;
      const int64_t begin = starts_[lo], len = hi - begin, chunk = (len + dp - 1) / dp;
      if (len > 0) {
        // A bucket whose length divides by dp is reduce-scattered straight from the
        // gradients and all-gathered in place into the weights; only the others go
        // through a padded copy in pad_ (none at 7B shapes: every tensor is a multiple of 8).
        const bool staged = chunk * dp != len;
        buckets_.push_back({lo, begin, len, staged ? padded : -1, chunk, shard, nullptr, nullptr});
        owned.push_back({begin + std::min(len, d * chunk), begin + std::min(len, (d + 1) * chunk)});
        if (staged) padded += chunk * dp;
        shard += chunk;
      }
      hi = begin;
      p = lo;
    }
    pad_ = Tensor::zeros({padded}, dt, dev);
    gshard_ = Tensor::zeros({shard}, dt, dev);
    master_ = Tensor::zeros({shard}, dt, dev);
  } else {
    owned.push_back({0, P});
    // f32 updates the weights in place; bf16 keeps an fp32 master apart from them.
    master_ = precision_ == Precision::bf16 ? Tensor::zeros({P}, dt, dev) : params.flat();
    gshard_ = grads.flat();
    if (dp > 1) reducer_ = std::make_unique<GradReducer>(grads.flat(), starts_, grid.dp_group(), bucket_elems);
  }
  // Pieces: each owned range cut at parameter boundaries. Ranges come bucket by bucket,
  // from the end of the buffer; within a bucket, in order.
  for (size_t k = 0; k < owned.size(); ++k) {
    const auto [lo_r, hi_r] = owned[k];
    const int64_t base = zero1_ ? buckets_[k].shard_begin : 0;
    for (size_t i = 0; i < params.size(); ++i) {
      const int64_t lo = std::max(starts_[i], lo_r), hi = std::min(starts_[i] + params[i].numel(), hi_r);
      if (hi > lo) pieces_.push_back({i, lo - starts_[i], base + (lo - lo_r), hi - lo});
    }
  }
  const int64_t n = master_.numel();
  if (cfg_.type == "adamw") {
    m_ = Tensor::zeros({n}, dt, dev);
    v_ = Tensor::zeros({n}, dt, dev);
  } else if (cfg_.momentum != 0) {
    m_ = Tensor::zeros({n}, dt, dev);
  }
  params_changed();
}

ShardedOptimizer::~ShardedOptimizer() {
  try {
    finish_gather();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lethe: %s\n", e.what());
  }
}

bool ShardedOptimizer::wait_gathers(size_t i) {
  const auto t0 = std::chrono::steady_clock::now();
  for (Bucket& b : buckets_)
    if (b.gather && (i == ParamSet::kAll || b.first_param <= i)) {
      b.gather->wait();
      b.gather.reset();
      --gathers_left_;
    }
  gather_wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return gathers_left_ == 0;
}

void ShardedOptimizer::finish_gather() {
  if (gathers_left_ == 0) return;
  wait_gathers(ParamSet::kAll);
  params_.set_fence(nullptr);
}

void ShardedOptimizer::set_trainable(std::vector<bool> trainable) {
  LETHE_CHECK(trainable.size() == params_.size(), "set_trainable: ", trainable.size(), " flags for ", params_.size(),
              " parameters");
  trainable_ = std::move(trainable);
}

void ShardedOptimizer::params_changed() {
  if (!zero1_) {
    if (precision_ == Precision::bf16) master_.copy_from(params_.flat());
    return;
  }
  for (const Piece& p : pieces_)
    master_.view(p.shard_begin, {p.count}).copy_from(params_.flat().view(starts_[p.param] + p.param_begin, {p.count}));
}

void ShardedOptimizer::set_master(size_t i, const Tensor& block) {
  LETHE_CHECK(precision_ == Precision::bf16, "set_master: only the bf16 policy keeps a master copy");
  const int64_t n = params_[i].numel();
  LETHE_CHECK(block.numel() == n, "set_master: ", block.numel(), " values for parameter ", params_.spec(i).name,
              " of ", n);
  const Tensor flat = block.reshape({n});
  if (!zero1_) {
    master_.view(starts_[i], {n}).copy_from(flat);
    return;
  }
  for (const Piece& p : pieces_)
    if (p.param == i) master_.view(p.shard_begin, {p.count}).copy_from(flat.view(p.param_begin, {p.count}));
}

void ShardedOptimizer::start_bucket(Bucket& b) {
  const int64_t dp = grid_.dp();
  Tensor out = gshard_.view(b.shard_begin, {b.chunk});
  if (b.pad_begin < 0) {
    b.pending = grid_.dp_group().reduce_scatter_async(grads_.flat().view(b.begin, {b.len}), out);
    return;
  }
  // The padding tail stays zero from the allocation on: only [0, len) is ever written here,
  // and the all-gather brings back the master's zero padding.
  Tensor padded = pad_.view(b.pad_begin, {b.chunk * dp});
  padded.view(0, {b.len}).copy_from(grads_.flat().view(b.begin, {b.len}));
  b.pending = grid_.dp_group().reduce_scatter_async(padded, out);
}

void ShardedOptimizer::grad_ready(size_t first) {
  if (reducer_) reducer_->ready_from(first);
  if (!zero1_) return;
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].first_param >= first)
    start_bucket(buckets_[next_bucket_++]);
}

bool ShardedOptimizer::frozen(size_t i) const { return !trainable_.empty() && !trainable_[i]; }

double ShardedOptimizer::global_norm() {
  // A parameter every tp rank holds whole (norm weights; replicated k/v) has the same
  // gradient on each: count it on tp rank 0 only. Frozen parameters do not count.
  std::vector<Tensor> counted;
  for (const Piece& p : pieces_) {
    if ((!params_.spec(p.param).sharded() && grid_.tp_rank() != 0) || frozen(p.param)) continue;
    counted.push_back(gshard_.view(p.shard_begin, {p.count}));
  }
  double ss = 0;  // in piece order, one host wait on a device
  for (double s : ops::sum_squares_each(counted)) ss += s;
  // ZeRO shards are disjoint over dp; without ZeRO every dp rank holds the same sum.
  ss = (zero1_ ? grid_.world() : grid_.tp_group()).all_reduce(ss, ReduceOp::sum);
  return std::sqrt(ss);
}

double ShardedOptimizer::step(double lr) {
  LETHE_CHECK(std::isfinite(lr) && lr >= 0, "learning rate must be finite and >= 0, got ", lr);
  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  finish_gather();  // the last step's weights are all in (the forward has read them)
  // What this step's forward waited for of the last step's gathers (timed by the fence).
  const double gather_waited = gather_wait_s_;
  gather_wait_s_ = 0;
  const auto t_reduce = clock::now();
  if (zero1_) {
    grad_ready(0);  // buckets the backward did not start
    for (Bucket& b : buckets_) {
      b.pending->wait();
      b.pending.reset();
    }
    next_bucket_ = 0;
  } else if (reducer_) {
    reducer_->finish();
  }
  comm_wait_.reduce_s = seconds_since(t_reduce);
  comm_wait_.gather_s = 0;
  const double norm = global_norm();
  LETHE_CHECK(std::isfinite(norm), "gradient norm is ", norm, "; refusing to update the weights");
  const double f = cfg_.grad_clip > 0 ? cfg_.grad_clip / (norm + 1e-6) : 1.0;
  ++step_;
  for (const Piece& p : pieces_) {
    if (frozen(p.param)) continue;
    const double wd = params_[p.param].ndim() >= 2 ? cfg_.weight_decay : 0.0;
    Tensor w = master_.view(p.shard_begin, {p.count}), g = gshard_.view(p.shard_begin, {p.count});
    if (f < 1) ops::scale_(g, f);
    if (cfg_.type == "adamw") {
      Tensor m = m_.view(p.shard_begin, {p.count}), v = v_.view(p.shard_begin, {p.count});
      ops::adamw_update(w, g, m, v, {lr, cfg_.beta1, cfg_.beta2, cfg_.eps, wd, step_});
    } else {
      Tensor buf = m_.defined() ? m_.view(p.shard_begin, {p.count}) : Tensor();
      ops::sgd_update(w, g, buf, {lr, cfg_.momentum, wd, step_ == 1});
    }
  }
  if (zero1_) {
    // Each bucket's updated chunks back to every dp rank, then into the weights; lowest
    // parameters first, as the next forward reads them.
    const auto t_gather = clock::now();
    const int64_t dp = grid_.dp(), d = grid_.dp_rank();
    for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
      Bucket& b = *it;
      // In place where the bucket divides by dp: this rank's chunk of the weights takes the
      // updated master (on a device a converting copy into bf16, which rounds as
      // round_to_bf16_ does), and the gather fills the rest, in the weights' dtype (bf16 on
      // a device: half the bytes of an fp32 gather).
      const bool staged = b.pad_begin >= 0;
      Tensor whole = staged ? pad_.view(b.pad_begin, {b.chunk * dp}) : params_.flat().view(b.begin, {b.len});
      Tensor mine = whole.view(d * b.chunk, {b.chunk});
      mine.copy_from(master_.view(b.shard_begin, {b.chunk}));
      if (precision_ == Precision::bf16 && mine.dtype() == DType::f32) round_to_bf16_(mine);
      if (staged) {  // the padded copy goes back into the weights at once
        grid_.dp_group().all_gather(mine, whole);
        params_.flat().view(b.begin, {b.len}).copy_from(whole.view(0, {b.len}));
      } else {
        b.gather = grid_.dp_group().all_gather_async(mine, whole);
        ++gathers_left_;
      }
    }
    if (gathers_left_ > 0) params_.set_fence([this](size_t i) { return wait_gathers(i); });
    comm_wait_.gather_s = gather_waited + seconds_since(t_gather);
  } else if (precision_ == Precision::bf16) {
    for (const Piece& p : pieces_) {
      if (frozen(p.param)) continue;
      Tensor w = params_.flat().view(starts_[p.param] + p.param_begin, {p.count});
      w.copy_from(master_.view(p.shard_begin, {p.count}));  // on a device into bf16: the copy rounds
      if (w.dtype() == DType::f32) round_to_bf16_(w);
    }
  }
  return norm;
}

}  // namespace lethe
