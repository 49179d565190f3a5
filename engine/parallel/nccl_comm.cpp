#include "engine/parallel/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace lethe {
namespace {

void cuda_check(cudaError_t e, const char* what) {
  LETHE_CHECK(e == cudaSuccess, what, ": ", cudaGetErrorString(e));
}

ncclDataType_t nccl_type(DType dt) {
  switch (dt) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::i32: return ncclInt32;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
  }
  LETHE_FAIL("NCCL: unsupported dtype");
}

int local_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return 0;
}

double timeout_seconds() {
  const char* s = std::getenv("LETHE_NCCL_TIMEOUT_S");
  return s ? std::atof(s) : 600.0;
}

class NcclCommunicator : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<Communicator> host)
      : host_(std::move(host)), rank_(host_->rank()), size_(host_->size()), timeout_(timeout_seconds()) {
    Communicator& mpi = *host_;
    int n_dev = 0;
    cuda_check(cudaGetDeviceCount(&n_dev), "cudaGetDeviceCount");
    LETHE_CHECK(n_dev > 0, "NCCL: no CUDA device visible to this rank");
    cuda_check(cudaSetDevice(local_rank() % n_dev), "cudaSetDevice");
    ncclUniqueId id;
    if (rank_ == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    static_assert(sizeof(ncclUniqueId) % sizeof(int32_t) == 0, "unique id size");
    Tensor buf = Tensor::zeros({int64_t(sizeof(ncclUniqueId) / sizeof(int32_t))}, DType::i32);
    if (rank_ == 0) std::memcpy(buf.raw(), &id, sizeof id);
    mpi.broadcast(buf, 0);
    std::memcpy(&id, buf.raw(), sizeof id);
    // Non-blocking communicator: a stuck peer cannot hang init or a collective; we poll.
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, size_, id, rank_, &cfg);
    if (r != ncclInProgress) check(r, "ncclCommInitRankConfig");
    wait_ready("ncclCommInitRankConfig");
  }
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  void set_stream(void* s) override { stream_ = static_cast<cudaStream_t>(s); }

  void all_reduce(Tensor& x, ReduceOp op) override {
    if (x.device() == Device::cpu) return host_->all_reduce(x, op);
    issue(ncclAllReduce(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x.dtype()), op == ReduceOp::sum ? ncclSum : ncclMax,
                        comm_, stream_),
          "ncclAllReduce");
  }
  std::unique_ptr<PendingCollective> all_reduce_async(Tensor& x, ReduceOp op) override {
    if (x.device() == Device::cpu) return host_->all_reduce_async(x, op);
    // Ordered on the stream: later kernels on it see the result; the host need not wait.
    ncclResult_t r = ncclAllReduce(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x.dtype()),
                                   op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream_);
    if (r != ncclInProgress) check(r, "ncclAllReduce");
    struct Pending : PendingCollective {
      NcclCommunicator* c;
      explicit Pending(NcclCommunicator* c_) : c(c_) {}
      void wait() override { c->wait_stream("ncclAllReduce"); }
    };
    return std::make_unique<Pending>(this);
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, size_, 1, "all_gather");
    if (out.device() == Device::cpu) return host_->all_gather(in, out);
    gpu(in, "all_gather");
    issue(ncclAllGather(in.raw(), out.raw(), size_t(in.numel()), nccl_type(in.dtype()), comm_, stream_),
          "ncclAllGather");
  }
  void reduce_scatter(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size_, "reduce_scatter");
    if (in.device() == Device::cpu) return host_->reduce_scatter(in, out);
    gpu(out, "reduce_scatter");
    issue(ncclReduceScatter(in.raw(), out.raw(), size_t(out.numel()), nccl_type(in.dtype()), ncclSum, comm_, stream_),
          "ncclReduceScatter");
  }
  std::unique_ptr<PendingCollective> reduce_scatter_async(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size_, "reduce_scatter_async");
    if (in.device() == Device::cpu) return host_->reduce_scatter_async(in, out);
    gpu(out, "reduce_scatter_async");
    ncclResult_t r = ncclReduceScatter(in.raw(), out.raw(), size_t(out.numel()), nccl_type(in.dtype()), ncclSum, comm_,
                                       stream_);
    if (r != ncclInProgress) check(r, "ncclReduceScatter");
    struct Pending : PendingCollective {
      NcclCommunicator* c;
      explicit Pending(NcclCommunicator* c_) : c(c_) {}
      void wait() override { c->wait_stream("ncclReduceScatter"); }
    };
    return std::make_unique<Pending>(this);
  }
  void broadcast(Tensor& x, int root) override {
    if (x.device() == Device::cpu) return host_->broadcast(x, root);
    issue(ncclBroadcast(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x.dtype()), root, comm_, stream_),
          "ncclBroadcast");
  }
  void barrier() override {
    // Drain this rank's NCCL work, then meet over MPI (NCCL has no barrier).
    wait_stream("barrier");
    host_->barrier();
  }
  void check_async_error() override {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) fail("NCCL", async);
  }

 private:
  void gpu(const Tensor& t, const char* op) {
    LETHE_CHECK(t.device() == Device::cuda, op, ": the NCCL backend takes GPU tensors, got ", t.describe());
  }
  [[noreturn]] void fail(const char* what, ncclResult_t r) {
    const std::string msg = std::string(ncclGetErrorString(r)) + " (" + ncclGetLastError(comm_) + ")";
    ncclCommAbort(comm_);
    comm_ = nullptr;
    LETHE_FAIL(what, " failed on rank ", rank_, " of ", size_, ": ", msg);
  }
  void check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess) fail(what, r);
  }
  void wait_ready(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
      ncclResult_t async = ncclInProgress;
      ncclCommGetAsyncError(comm_, &async);
      if (async == ncclSuccess) return;
      if (async != ncclInProgress) fail(what, async);
      timed_out(t0, what);
      std::this_thread::yield();
    }
  }
  void wait_stream(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda_check(q, what);
      check_async_error();
      timed_out(t0, what);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  void timed_out(std::chrono::steady_clock::time_point t0, const char* what) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < timeout_) return;
    ncclCommAbort(comm_);
    comm_ = nullptr;
    LETHE_FAIL(what, " made no progress for ", timeout_, " s on rank ", rank_, " (a peer died or hangs); aborted");
  }
  // Synchronous semantics for the blocking calls: enqueue, then wait with error polling.
  void issue(ncclResult_t r, const char* what) {
    if (r != ncclInProgress) check(r, what);
    wait_ready(what);
    wait_stream(what);
  }

  std::shared_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int rank_, size_;
  double timeout_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> mpi_group) {
  return std::make_unique<NcclCommunicator>(std::move(mpi_group));
}

}  // namespace lethe
