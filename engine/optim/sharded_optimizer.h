// The optimizer of a model under a process grid: gradient sum over data-parallel ranks,
// global-norm clipping across tp and dp, and AdamW / SGD on fp32 master weights.
//
// zero1 off: the gradient is all-reduced over dp in buckets (GradReducer, started from
// the backward through grad_ready) and every rank updates all of its tp slice.
// zero1 on (ZeRO stage 1): the flat buffer is cut into the same buckets, each split over
// dp; a bucket is reduce-scattered as soon as the backward has finished it, each rank
// keeps master weights and moments for its chunk of every bucket only, updates those,
// and the weights are all-gathered back bucket by bucket. AdamW state memory drops by dp.
// The all-gathers are started, lowest parameters first, and left running: the weights'
// ParamSet carries a fence that waits for a parameter's bucket when anything reads it,
// so the next forward, which reads the parameters in order, overlaps the rest.
//
// Precision::bf16: the master weights are fp32 (a separate copy even without ZeRO) and the
// weights written back are the master rounded to bf16; under ZeRO each rank rounds its
// updated chunk before the all-gather, which is what gathering a bf16 copy would give.
//
// With a one-rank grid it performs exactly the arithmetic of Optimizer.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/core/precision.h"
#include "engine/model/param_set.h"
#include "engine/optim/optimizer.h"
#include "engine/parallel/grad_reducer.h"
#include "engine/parallel/grid.h"

namespace lethe {

class ShardedOptimizer {
 public:
  // params/grads: this rank's tp slice (the model's sets). bucket_elems: a bucket (the
  // all-reduce's without ZeRO, the reduce-scatter's with it) closes at this many elements;
  // runs take parallel.bucket_elements.
  ShardedOptimizer(ParamSet& params, ParamSet& grads, const OptimConfig& cfg, ProcessGrid& grid,
                   int64_t bucket_elems = 1 << 20, Precision precision = Precision::f32);
  // Waits for the weight all-gathers still running and takes the fence off the weights.
  ~ShardedOptimizer();
  ShardedOptimizer(const ShardedOptimizer&) = delete;
  ShardedOptimizer& operator=(const ShardedOptimizer&) = delete;
  // Every weight all-gather of the last step finished (the fence does it on demand).
  void finish_gather();

  // The model's backward reports that parameters from `first` on are final (only for the
  // last micro-batch of a step); buckets wholly among them start their all-reduce.
  void grad_ready(size_t first);
  // Sums grads over dp, clips by the global norm, updates params. Returns the pre-clip
  // global norm (the same on every rank). grads are consumed (left reduced or scaled).
  double step(double lr);

  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t s) { step_ = s; }
  const OptimConfig& config() const { return cfg_; }
  bool zero1() const { return zero1_; }
  Precision precision() const { return precision_; }
  void set_trainable(std::vector<bool> trainable);
  // After params are overwritten (a loaded checkpoint), refresh the master copy.
  void params_changed();
  // Under bf16: this rank's part of parameter i's fp32 master from `block`, the parameter's
  // local tp block in any dtype (a loaded f32 weight, whose bf16 rounding the model holds).
  void set_master(size_t i, const Tensor& block);

  // The part of the flat buffer this rank updates: pieces of parameters.
  struct Piece {
    size_t param;        // index in the ParamSet
    int64_t param_begin; // first element within the parameter (flattened, local tp slice)
    int64_t shard_begin; // first element within this rank's moment buffers
    int64_t count;
  };
  const std::vector<Piece>& pieces() const { return pieces_; }
  // Moments over this rank's shard (its chunk of every bucket, with ZeRO; the whole tp
  // slice without): AdamW m and v, SGD momentum in m.
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  // The fp32 weights this rank updates, laid out as m(): under bf16 the master a
  // checkpoint must keep (the weights are only its rounding); under f32 without ZeRO the
  // weights themselves.
  Tensor& master() { return master_; }
  bool has_m() const { return m_.defined(); }
  // Wall time of the last step's dp communication that the step had to wait for: the
  // gradient reduction still unfinished when the backward ended (what the overlap did not
  // hide), and of ZeRO-1's weight all-gathers what the step waited for: starting them,
  // the few buckets gathered through a padded copy, and what this step's forward waited
  // for of the previous step's gathers (the rest overlapped it).
  struct CommWait {
    double reduce_s = 0, gather_s = 0;
  };
  CommWait last_comm_wait() const { return comm_wait_; }
  bool has_v() const { return v_.defined(); }

 private:
  struct Bucket {
    size_t first_param;             // the bucket holds parameters first_param.. (to the next bucket)
    int64_t begin, len;             // its range of the flat buffer
    int64_t pad_begin, chunk;       // its padded copy in pad_ (chunk * dp elements); -1: none (len = chunk * dp)
    int64_t shard_begin;            // this rank's chunk in the shard buffers
    std::unique_ptr<PendingCollective> pending;  // its gradient reduce-scatter
    std::unique_ptr<PendingCollective> gather;   // its weight all-gather (in place)
  };
  // The fence on the weights: waits for the gathers of the buckets holding parameters up
  // to i (all for ParamSet::kAll); true once none is left.
  bool wait_gathers(size_t i);
  double global_norm();
  bool frozen(size_t i) const;
  void start_bucket(Bucket& b);

  ParamSet& params_;
  ParamSet& grads_;
  OptimConfig cfg_;
  ProcessGrid& grid_;
  bool zero1_;
  Precision precision_;
  int64_t step_ = 0;
  std::vector<bool> trainable_;
  std::vector<Piece> pieces_;
  std::vector<int64_t> starts_;   // first flat element of each parameter
  std::vector<Bucket> buckets_;   // ZeRO buckets, from the end of the buffer
  size_t next_bucket_ = 0;        // first bucket not yet started this step
  size_t gathers_left_ = 0;       // weight all-gathers started and not yet waited for
  double gather_wait_s_ = 0;      // time the fence has waited for them since the last step
  Tensor master_, gshard_, pad_, m_, v_;
  std::unique_ptr<GradReducer> reducer_;
  CommWait comm_wait_;
};

}  // namespace lethe
