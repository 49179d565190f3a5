// ProcessGrid: world = tp x dp, tensor-parallel ranks innermost (world rank =
// dp_rank * tp + tp_rank), so a tensor-parallel group sits on neighbouring ranks (one
// node's NVLink). Each rank holds three groups: world, its tp group and its dp group.
#pragma once
#include <memory>
#include <string>

#include "engine/core/tensor.h"
#include "engine/parallel/communicator.h"

namespace lethe {

struct ParallelConfig {
  int tp = 1;         // tensor-parallel ranks (Megatron's tensor_model_parallel_size)
  int dp = 1;         // data-parallel replicas
  bool zero1 = true;  // shard AdamW state and master weights over dp (ZeRO stage 1)
  // Gradient buckets (all-reduce, or ZeRO-1's reduce-scatter) close at this many
  // elements: Megatron-LM's default of 40M, so a 7B step runs about 170 bucket
  // collectives per tp rank, not thousands of small ones.
  int64_t bucket_elements = 40'000'000;
  int world() const { return tp * dp; }
  void validate() const;  // throws naming the field
};

class ProcessGrid {
 public:
  // One process: local communicators, MPI untouched.
  static std::shared_ptr<ProcessGrid> single();
  // From the launcher's world. MPI is initialised only here, when the process was started
  // by an MPI launcher or tp * dp > 1; the world size must equal tp * dp. device: CPU
  // tensors use MPI groups, CUDA tensors NCCL groups (unique ids broadcast over MPI).
  static std::shared_ptr<ProcessGrid> create(const ParallelConfig& cfg, Device device = Device::cpu);
  // From an existing world group (tests build grids of several shapes on one world).
  static std::shared_ptr<ProcessGrid> from_world(std::shared_ptr<Communicator> world, const ParallelConfig& cfg);

  int tp() const { return cfg_.tp; }
  int dp() const { return cfg_.dp; }
  bool zero1() const { return cfg_.zero1 && cfg_.dp > 1; }
  int64_t bucket_elements() const { return cfg_.bucket_elements; }
  int rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }
  int tp_rank() const { return tp_->rank(); }
  int dp_rank() const { return dp_->rank(); }
  bool parallel() const { return world_size() > 1; }
  // This rank among the ranks of its node (shared memory), which picks its GPU.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  Communicator& world() const { return *world_; }
  Communicator& tp_group() const { return *tp_; }
  Communicator& dp_group() const { return *dp_; }
  // The backend moving the model's tensors: the dp group's when dp > 1, else the tp
  // group's ("nccl", "mpi (host-staged)", "mpi", "local"). The world group only carries
  // host scalars and barriers.
  std::string backend() const { return (dp() > 1 ? dp_ : tp_)->backend(); }
  std::string describe() const;  // "tp=2 x dp=2 (mpi), rank 3"

 private:
  ParallelConfig cfg_;
  std::shared_ptr<Communicator> world_, tp_, dp_;
  int local_rank_ = 0, local_size_ = 1;
};

}  // namespace lethe
