// Communicator: the collectives tensor and data parallelism need, over one group of
// ranks. Three backends share it: local (one rank, no library), MPI (CPU buffers) and
// NCCL (GPU buffers, on a CUDA stream). Model and optimizer code call only this
// interface, through the named functions of regions.h, so one code path serves all.
#pragma once
#include <memory>
#include <string>

#include "engine/core/tensor.h"

namespace lethe {

enum class ReduceOp { sum, max };

// A started collective; wait() completes it. Destroying an unfinished one waits too, so
// a buffer is never released while the library may still write it.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "local", "mpi", "nccl"

  // In place, every rank ends with the reduction (f32, f64 or i32).
  virtual void all_reduce(Tensor& x, ReduceOp op) = 0;
  // Starts an in-place all-reduce that may overlap with computation. Backends without
  // asynchronous collectives finish it before returning.
  virtual std::unique_ptr<PendingCollective> all_reduce_async(Tensor& x, ReduceOp op);
  // out[size * n] = every rank's in[n], in rank order. `in` may be out's own rank-th
  // chunk (in place).
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  // Started all_gather (ZeRO's weight buckets, overlapped with the next forward); as
  // all_reduce_async, backends without asynchronous collectives finish it at once.
  virtual std::unique_ptr<PendingCollective> all_gather_async(const Tensor& in, Tensor& out);
  // out[n] = sum over ranks of chunk `rank` of their in[size * n].
  virtual void reduce_scatter(const Tensor& in, Tensor& out) = 0;
  // Started reduce-scatter (ZeRO's gradient buckets during the backward); as
  // all_reduce_async, backends without asynchronous collectives finish it at once.
  virtual std::unique_ptr<PendingCollective> reduce_scatter_async(const Tensor& in, Tensor& out);
  // x from `root` to every rank.
  virtual void broadcast(Tensor& x, int root) = 0;
  virtual void barrier() = 0;
  // Raises lethe::Error if an asynchronous error is pending (NCCL); others never fail late.
  virtual void check_async_error() {}

  double all_reduce(double v, ReduceOp op);
  int64_t all_reduce(int64_t v, ReduceOp op);
};

// A one-rank group: every collective is the identity (or a copy).
std::unique_ptr<Communicator> make_local_communicator();

// Checks shared by the backends; `op` names the collective in errors.
void check_collective_args(const Tensor& in, const Tensor& out, int64_t in_mult, int64_t out_mult, const char* op);

}  // namespace lethe
