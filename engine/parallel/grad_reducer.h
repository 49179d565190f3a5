// Data-parallel gradient all-reduce in buckets, started while the backward pass is still
// running (PyTorch DDP's scheme). The backward produces gradients from the last parameter
// to the first, so buckets are cut from the end of the flat buffer: as soon as the
// backward reports that every parameter from index `first` on is final, each bucket lying
// wholly in that range is started (MPI_Iallreduce on CPU, a NCCL all-reduce on GPU).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/parallel/communicator.h"

namespace lethe {

class GradReducer {
 public:
  // flat: the gradient buffer; starts[i]: its first element of parameter i, in order.
  // bucket_elems: a bucket closes once it holds at least this many elements.
  GradReducer(Tensor flat, std::vector<int64_t> starts, Communicator& dp, int64_t bucket_elems = 1 << 20);

  // Parameters with index >= first hold their final gradient for this step.
  void ready_from(size_t first);
  // Starts the remaining buckets and waits for all: the buffer then holds the sum over dp.
  void finish();
  size_t n_buckets() const { return buckets_.size(); }

 private:
  struct Bucket {
    size_t first_param;
    Tensor view;
    std::unique_ptr<PendingCollective> pending;
    bool started = false;
  };
  Communicator& dp_;
  std::vector<Bucket> buckets_;  // from the end of the buffer to its start
  size_t next_ = 0;              // first bucket not started
};

}  // namespace lethe
