#include "engine/parallel/mpi_comm.h"

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <thread>

#include "engine/parallel/failure.h"

namespace lethe {
namespace {

MPI_Datatype mpi_type(DType dt, bool reducing, const char* op) {
  switch (dt) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::bf16:
    case DType::f16:
      LETHE_CHECK(!reducing, op, ": MPI cannot reduce ", dtype_name(dt), " (CPU tensors are f32 or f64)");
      return MPI_UINT16_T;  // moved, never added
  }
  LETHE_FAIL(op, ": unsupported dtype");
}

int mpi_count(int64_t n, const char* op) {
  LETHE_CHECK(n <= INT_MAX, op, ": ", n, " elements exceed MPI's int count");
  return int(n);
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::sum ? MPI_SUM : MPI_MAX; }

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  LETHE_FAIL(what, ": ", std::string(msg, size_t(len)));
}

// Seconds a collective may wait for its peers (LETHE_COLLECTIVE_TIMEOUT_S, default 600;
// 0 waits forever). A peer that hangs without dying (stuck I/O, a deadlock) would
// otherwise hold every other rank forever; past the limit the job is aborted with a
// message naming the collective.
double collective_timeout() {
  static const double t = [] {
    const char* s = std::getenv("LETHE_COLLECTIVE_TIMEOUT_S");
    return s ? std::atof(s) : 600.0;
  }();
  return t;
}

// Every collective is started non-blocking and completed here, so it can time out.
void complete(MPI_Request& r, const char* what) {
  const double limit = collective_timeout();
  if (limit <= 0) {
    check(MPI_Wait(&r, MPI_STATUS_IGNORE), what);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int polls = 0;; ++polls) {
    int done = 0;
    check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    // Spin briefly (tensor-parallel all-reduces are short), then yield the core.
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    if (polls % 64 == 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > limit)
      abort_job(std::string(what) + " made no progress for " + std::to_string(int(limit)) +
                " s (a peer rank hangs); set LETHE_COLLECTIVE_TIMEOUT_S to wait longer");
  }
}

class MpiPending : public PendingCollective {
 public:
  MpiPending(MPI_Request r, const char* what) : req_(r), what_(what) {}
  // Bounded like wait(): a peer that never joins ends the job instead of hanging it here.
  ~MpiPending() override {
    if (req_ == MPI_REQUEST_NULL) return;
    try {
      complete(req_, what_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lethe: %s\n", e.what());
    }
  }
  void wait() override { complete(req_, what_); }

 private:
  MPI_Request req_;
  const char* what_;
};

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  MPI_Comm comm() const { return comm_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(Tensor& x, ReduceOp op) override {
    check_cpu(x, "all_reduce", "x");
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, x.raw(), mpi_count(x.numel(), "all_reduce"),
                         mpi_type(x.dtype(), true, "all_reduce"), mpi_op(op), comm_, &r),
          "MPI_Iallreduce");
    complete(r, "all_reduce");
  }
  std::unique_ptr<PendingCollective> all_reduce_async(Tensor& x, ReduceOp op) override {
    check_cpu(x, "all_reduce_async", "x");
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, x.raw(), mpi_count(x.numel(), "all_reduce_async"),
                         mpi_type(x.dtype(), true, "all_reduce_async"), mpi_op(op), comm_, &r),
          "MPI_Iallreduce");
    return std::make_unique<MpiPending>(r, "all_reduce_async");
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    MPI_Request r = start_all_gather(in, out, "all_gather");
    complete(r, "all_gather");
  }
  std::unique_ptr<PendingCollective> all_gather_async(const Tensor& in, Tensor& out) override {
    return std::make_unique<MpiPending>(start_all_gather(in, out, "all_gather_async"), "all_gather_async");
  }
  void reduce_scatter(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size_, "reduce_scatter");
    check_cpu(in, "reduce_scatter", "in");
    MPI_Request r;
    check(MPI_Ireduce_scatter_block(in.raw(), out.raw(), mpi_count(out.numel(), "reduce_scatter"),
                                    mpi_type(in.dtype(), true, "reduce_scatter"), MPI_SUM, comm_, &r),
          "MPI_Ireduce_scatter_block");
    complete(r, "reduce_scatter");
  }
  std::unique_ptr<PendingCollective> reduce_scatter_async(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size_, "reduce_scatter_async");
    check_cpu(in, "reduce_scatter_async", "in");
    MPI_Request r;
    check(MPI_Ireduce_scatter_block(in.raw(), out.raw(), mpi_count(out.numel(), "reduce_scatter_async"),
                                    mpi_type(in.dtype(), true, "reduce_scatter_async"), MPI_SUM, comm_, &r),
          "MPI_Ireduce_scatter_block");
    return std::make_unique<MpiPending>(r, "reduce_scatter_async");
  }
  void broadcast(Tensor& x, int root) override {
    check_cpu(x, "broadcast", "x");
    MPI_Request r;
    check(MPI_Ibcast(x.raw(), mpi_count(x.numel(), "broadcast"), mpi_type(x.dtype(), false, "broadcast"), root, comm_,
                     &r),
          "MPI_Ibcast");
    complete(r, "broadcast");
  }
  void barrier() override {
    MPI_Request r;
    check(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier");
    complete(r, "barrier");
  }

 private:
  // MPI_Iallgather of every rank's `in` into `out`, in place when `in` is out's own chunk.
  MPI_Request start_all_gather(const Tensor& in, Tensor& out, const char* op) {
    check_collective_args(in, out, size_, 1, op);
    check_cpu(out, op, "out");
    const int n = mpi_count(in.numel(), op);
    const MPI_Datatype t = mpi_type(in.dtype(), false, op);
    const bool in_place = in.raw() == static_cast<char*>(out.raw()) + size_t(rank_) * in.nbytes();
    MPI_Request r;
    check(MPI_Iallgather(in_place ? MPI_IN_PLACE : in.raw(), n, t, out.raw(), n, t, comm_, &r), "MPI_Iallgather");
    return r;
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

void mpi_init_once() {
  int init = 0;
  MPI_Initialized(&init);
  if (init) return;
  int provided = 0;
  // Only the main thread calls MPI; OpenMP threads compute between the calls.
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  std::atexit(finalize_at_exit);
}

bool mpi_is_initialized() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

std::unique_ptr<Communicator> mpi_world() {
  mpi_init_once();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

std::unique_ptr<Communicator> mpi_split(const Communicator& parent, int color, int key) {
  const auto* p = dynamic_cast<const MpiCommunicator*>(&parent);
  LETHE_CHECK(p, "mpi_split: the parent group is a ", parent.backend(), " communicator, not MPI");
  MPI_Comm c;
  check(MPI_Comm_split(p->comm(), color, key, &c), "MPI_Comm_split");
  return std::make_unique<MpiCommunicator>(c, true);
}

NodeRank mpi_node_rank() {
  mpi_init_once();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm node;
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  NodeRank r;
  MPI_Comm_rank(node, &r.local_rank);
  MPI_Comm_size(node, &r.local_size);
  MPI_Comm_free(&node);
  return r;
}

void mpi_abort_world(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this is for a library that does
}

}  // namespace lethe
