#include "engine/parallel/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <cmath>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "engine/parallel/failure.h"
#include "engine/parallel/watchdog.h"

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

// LETHE_NCCL_TIMEOUT_S: seconds without progress before a collective is aborted (default
// 600); 0 waits forever, as LETHE_COLLECTIVE_TIMEOUT_S does for MPI.
ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclMax; }

double timeout_seconds() {
  const char* s = std::getenv("LETHE_NCCL_TIMEOUT_S");
  if (!s || !*s) return 600.0;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  LETHE_CHECK(end && *end == '\0' && std::isfinite(v) && v >= 0, "LETHE_NCCL_TIMEOUT_S='", s,
              "': expected a number of seconds >= 0 (0: wait forever)");
  return v == 0 ? std::numeric_limits<double>::infinity() : v;
}

// Polls without burning a core for long waits, without adding 50 us to short ones.
void backoff(int& spins) {
  if (++spins < 1000) std::this_thread::yield();
  else std::this_thread::sleep_for(std::chrono::microseconds(20));
}

class NcclCommunicator : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<Communicator> host)
      : host_(std::move(host)), rank_(host_->rank()), size_(host_->size()), timeout_(timeout_seconds()) {
    int version = 0;
    ncclGetVersion(&version);
    LETHE_CHECK(version >= kMinNcclVersion, "NCCL ", version / 10000, ".", version / 100 % 100, " is too old: lethe needs ",
                kMinNcclVersion / 10000, ".", kMinNcclVersion / 100 % 100,
                " or newer (non-blocking communicators, so a dead peer cannot hang the job)");
    // The device was chosen by ProcessGrid::create before anything was allocated.
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    cuda_check(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    ncclUniqueId id;
    if (rank_ == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      LETHE_CHECK(r == ncclSuccess, "ncclGetUniqueId: ", ncclGetErrorString(r));
    }
    static_assert(sizeof(ncclUniqueId) % sizeof(int32_t) == 0, "unique id size");
    Tensor buf = Tensor::zeros({int64_t(sizeof(ncclUniqueId) / sizeof(int32_t))}, DType::i32);
    if (rank_ == 0) std::memcpy(buf.raw(), &id, sizeof id);
    host_->broadcast(buf, 0);
    std::memcpy(&id, buf.raw(), sizeof id);
    // Non-blocking communicator: a stuck peer cannot hang init or a collective; we poll.
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&comm_, size_, id, rank_, &cfg);
    if (r != ncclInProgress) check(r, "ncclCommInitRankConfig");
    wait_enqueued("ncclCommInitRankConfig");
    int device = 0;
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    watchdog_ = std::make_unique<Watchdog>(
        timeout_, [this](const std::string& m) { watchdog_failure(m); }, [this] { return health(); },
        [device] { cudaSetDevice(device); }, /*in_order=*/true);
  }

  ~NcclCommunicator() override {
    watchdog_.reset();  // joins its thread: nothing polls the communicator once it is gone
    if (comm_ && !aborted_) {
      // A non-blocking communicator is finalized (its pending work flushed) before it is
      // destroyed; one that cannot finish in time is aborted instead.
      const ncclResult_t f = ncclCommFinalize(comm_);
      bool clean = f == ncclSuccess || f == ncclInProgress;
      const auto t0 = std::chrono::steady_clock::now();
      for (int spins = 0; clean;) {
        ncclResult_t s = ncclInProgress;
        ncclCommGetAsyncError(comm_, &s);
        if (s == ncclSuccess) break;
        if (s != ncclInProgress ||
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_)
          clean = false;
        backoff(spins);
      }
      if (clean) ncclCommDestroy(comm_);
      else ncclCommAbort(comm_);
    }
    if (inputs_ready_) cudaEventDestroy(inputs_ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  void all_reduce(Tensor& x, ReduceOp op) override {
    if (x.device() == Device::cpu) return host_->all_reduce(x, op);
    after_compute();
    run([&] { return ncclAllReduce(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x.dtype()), nccl_op(op), comm_, stream_); },
        "ncclAllReduce");
  }
  std::unique_ptr<PendingCollective> all_reduce_async(Tensor& x, ReduceOp op) override {
    if (x.device() == Device::cpu) return host_->all_reduce_async(x, op);
    after_compute();
    return start(
        [&] { return ncclAllReduce(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x.dtype()), nccl_op(op), comm_, stream_); },
        "ncclAllReduce");
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, size_, 1, "all_gather");
    if (out.device() == Device::cpu) return host_->all_gather(in, out);
    gpu(in, "all_gather");
    after_compute();
    run([&] { return ncclAllGather(in.raw(), out.raw(), size_t(in.numel()), nccl_type(in.dtype()), comm_, stream_); },
        "ncclAllGather");
  }
  std::unique_ptr<PendingCollective> all_gather_async(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, size_, 1, "all_gather_async");
    if (out.device() == Device::cpu) return host_->all_gather_async(in, out);
    gpu(in, "all_gather_async");
    after_compute();
    return start([&] { return ncclAllGather(in.raw(), out.raw(), size_t(in.numel()), nccl_type(in.dtype()), comm_, stream_); },
                 "ncclAllGather");
  }
  void reduce_scatter(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size_, "reduce_scatter");
    if (in.device() == Device::cpu) return host_->reduce_scatter(in, out);
    gpu(out, "reduce_scatter");
    after_compute();
    run([&] {
      return ncclReduceScatter(in.raw(), out.raw(), size_t(out.numel()), nccl_type(in.dtype()), ncclSum, comm_, stream_);
    }, "ncclReduceScatter");
  }
  std::unique_ptr<PendingCollective> reduce_scatter_async(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size_, "reduce_scatter_async");
    if (in.device() == Device::cpu) return host_->reduce_scatter_async(in, out);
    gpu(out, "reduce_scatter_async");
    after_compute();
    return start([&] {
      return ncclReduceScatter(in.raw(), out.raw(), size_t(out.numel()), nccl_type(in.dtype()), ncclSum, comm_, stream_);
    }, "ncclReduceScatter");
  }
  void broadcast(Tensor& x, int root) override {
    if (x.device() == Device::cpu) return host_->broadcast(x, root);
    after_compute();
    run([&] { return ncclBroadcast(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x.dtype()), root, comm_, stream_); },
        "ncclBroadcast");
  }
  void barrier() override {
    // This rank's collectives finished, then a meeting over MPI (NCCL has no barrier).
    Event done(stream_);
    wait_event(done.e, "barrier");
    host_->barrier();
  }
  void check_async_error() override {
    const ncclResult_t async = async_state();
    if (async != ncclSuccess && async != ncclInProgress) fail("NCCL", async);
  }

 private:
  // An event recorded on a stream now, destroyed with the object.
  struct Event {
    cudaEvent_t e = nullptr;
    explicit Event(cudaStream_t s) {
      cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
      cuda_check(cudaEventRecord(e, s), "cudaEventRecord");
    }
    ~Event() {
      if (e) cudaEventDestroy(e);
    }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
  };

  // Started collective: wait() makes the compute stream wait for it (no host wait); the
  // watchdog holds the same event until it completes.
  struct Pending : PendingCollective {
    NcclCommunicator* c;
    std::shared_ptr<Event> done;
    bool finished = false;
    Pending(NcclCommunicator* c_, std::shared_ptr<Event> d) : c(c_), done(std::move(d)) {}
    void wait() override {
      if (finished) return;
      finished = true;
      c->compute_waits(done->e);
      c->check_async_error();
    }
    // What the compute stream launches after this object is gone must not touch the
    // buffers before the library is done with them.
    ~Pending() override {
      if (finished) return;
      try {
        wait();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "lethe: %s\n", e.what());
      }
    }
  };

  // The kernels and copies run on the legacy default stream, which a non-blocking stream
  // does not wait for, and the reverse: a collective's stream first waits for everything
  // launched so far (the kernels producing its inputs), and the legacy stream waits for
  // the collective before anything launched after it (blocking call) or after wait()
  // (asynchronous call). The host waits for neither; the watchdog sees each collective to
  // its end and ends the process if one fails or hangs.
  void after_compute() {
    LETHE_CHECK(!aborted_, "NCCL: the communicator of rank ", rank_, " was aborted after an earlier failure");
    cuda_check(cudaEventRecord(inputs_ready_, cudaStreamLegacy), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, inputs_ready_, 0), "cudaStreamWaitEvent");
  }
  void compute_waits(cudaEvent_t e) {
    cuda_check(cudaStreamWaitEvent(cudaStreamLegacy, e, 0), "cudaStreamWaitEvent");
  }
  // An event after the collective just enqueued, watched until it completes.
  std::shared_ptr<Event> watched(const char* what) {
    auto done = std::make_shared<Event>(stream_);
    watchdog_->watch(what, [done] {
      // Another error is a sticky one from any launch (a compute kernel's fault, say): the
      // main thread's next synchronisation raises it, naming the kernel in debug mode, so
      // the watchdog stops watching rather than blame the collective.
      const cudaError_t q = cudaEventQuery(done->e);
      return Watchdog::Check{q == cudaErrorNotReady ? Watchdog::State::pending : Watchdog::State::done, {}};
    });
    return done;
  }
  // The watchdog's health check and failure, on its thread. The abort mutex keeps it from
  // polling a communicator the main thread is aborting, and the reverse.
  std::string health() {
    std::lock_guard<std::mutex> lock(abort_mu_);
    if (aborted_) return {};  // the main thread failed first and raises the error itself
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async == ncclSuccess || async == ncclInProgress) return {};
    return std::string(ncclGetErrorString(async)) + " (" + ncclGetLastError(comm_) + ")";
  }
  // The main thread's view of the asynchronous state; once aborted (by either thread) the
  // communicator may no longer be queried, and whoever aborted it reports why.
  ncclResult_t async_state() {
    std::lock_guard<std::mutex> lock(abort_mu_);
    if (aborted_) return ncclInvalidUsage;
    ncclResult_t async = ncclInProgress;
    ncclCommGetAsyncError(comm_, &async);
    return async;
  }
  // Ends the process at once, message first: ncclCommAbort could itself hang, and the
  // process ending releases the communicator anyway. Nothing happens when the main thread
  // failed first (it reports its own error and aborts the job); the watchdog then stops.
  void watchdog_failure(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(abort_mu_);
      if (aborted_.exchange(true)) return;
    }
    abort_rank("NCCL: " + message + " on rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
               "; this rank exits");
  }
  void abort_comm() {
    std::lock_guard<std::mutex> lock(abort_mu_);
    if (aborted_.exchange(true)) return;
    ncclCommAbort(comm_);
  }
  void gpu(const Tensor& t, const char* op) {
    LETHE_CHECK(t.device() == Device::cuda, op, ": the NCCL backend takes GPU tensors, got ", t.describe());
  }
  [[noreturn]] void fail(const char* what, ncclResult_t r) {
    std::string msg;
    {
      std::lock_guard<std::mutex> lock(abort_mu_);
      LETHE_CHECK(!aborted_, what, " on rank ", rank_, ": the communicator was aborted after an earlier failure");
      msg = std::string(ncclGetErrorString(r)) + " (" + ncclGetLastError(comm_) + ")";
      aborted_ = true;
      ncclCommAbort(comm_);
    }
    LETHE_FAIL(what, " failed on rank ", rank_, " of ", size_, ": ", msg);
  }
  void check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess && r != ncclInProgress) fail(what, r);
  }
  // A non-blocking call may return before NCCL has put the operation on the stream; until
  // then neither the stream nor an event recorded on it covers it.
  void wait_enqueued(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int spins = 0;; backoff(spins)) {
      const ncclResult_t async = async_state();
      if (async == ncclSuccess) return;
      if (async != ncclInProgress) fail(what, async);
      timed_out(t0, what);
    }
  }
  void wait_event(cudaEvent_t e, const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int spins = 0;; backoff(spins)) {
      const cudaError_t q = cudaEventQuery(e);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda_check(q, what);
      check_async_error();
      timed_out(t0, what);
    }
  }
  void timed_out(std::chrono::steady_clock::time_point t0, const char* what) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < timeout_) return;
    abort_comm();
    LETHE_FAIL(what, " made no progress for ", timeout_, " s on rank ", rank_, " (a peer died or hangs); aborted");
  }
  // Blocking semantics without a host wait: once NCCL has enqueued the collective, the
  // compute stream waits for it, so every later kernel and copy sees the result.
  template <class Call>
  void run(Call call, const char* what) {
    enqueue(call, what);
    compute_waits(watched(what)->e);
  }
  template <class Call>
  std::unique_ptr<PendingCollective> start(Call call, const char* what) {
    enqueue(call, what);
    return std::make_unique<Pending>(this, watched(what));
  }
  // One thread at a time operates a communicator (NCCL's rule), and an aborted one is never
  // used again: the call runs under the lock the watchdog's health check takes.
  template <class Call>
  void enqueue(Call call, const char* what) {
    ncclResult_t r;
    {
      std::lock_guard<std::mutex> lock(abort_mu_);
      LETHE_CHECK(!aborted_, what, " on rank ", rank_, ": the communicator was aborted after an earlier failure");
      r = call();
    }
    check(r, what);
    wait_enqueued(what);
  }

  std::shared_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;  // set once; aborted_ says whether it may still be used
  cudaStream_t stream_ = nullptr;
  cudaEvent_t inputs_ready_ = nullptr;
  std::mutex abort_mu_;
  std::atomic<bool> aborted_{false};
  int rank_, size_;
  double timeout_;
  std::unique_ptr<Watchdog> watchdog_;  // last: destroyed first
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> mpi_group) {
  return std::make_unique<NcclCommunicator>(std::move(mpi_group));
}

}  // namespace lethe
