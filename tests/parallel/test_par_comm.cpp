// Collectives and the process grid under mpirun (any rank count; registered with 3 and 4).
#include <gtest/gtest.h>

#include <mpi.h>

#include <cstdlib>
#include <cstring>

#include "engine/core/device_memory.h"
#include "engine/parallel/grad_reducer.h"
#include "engine/parallel/grid.h"
#include "engine/parallel/mpi_comm.h"
#include "engine/parallel/regions.h"
#include "engine/parallel/staged_comm.h"

namespace lethe {
namespace {

std::shared_ptr<Communicator> world() { return std::shared_ptr<Communicator>(mpi_world()); }

std::vector<double> test_values(const Tensor& t) {
  std::vector<double> v;
  for (int64_t i = 0; i < t.numel(); ++i)
    v.push_back(t.dtype() == DType::f32 ? double(t.data<float>()[i]) : t.data<double>()[i]);
  return v;
}

TEST(MpiComm, AllReduceSumAndMaxAreExact) {
  auto w = world();
  const int r = w->rank(), n = w->size();
  Tensor x = Tensor::from<float>({3}, {float(r), 1.0f, float(-r)});
  w->all_reduce(x, ReduceOp::sum);
  EXPECT_EQ(x.data<float>()[0], float(n * (n - 1) / 2));  // small integers: exact in f32
  EXPECT_EQ(x.data<float>()[1], float(n));
  Tensor y = Tensor::from<double>({2}, {double(r), -double(r)});
  w->all_reduce(y, ReduceOp::max);
  EXPECT_EQ(y.data<double>()[0], double(n - 1));
  EXPECT_EQ(y.data<double>()[1], 0.0);
  Tensor z = Tensor::from<int32_t>({1}, {r + 1});
  w->all_reduce(z, ReduceOp::sum);
  EXPECT_EQ(z.data<int32_t>()[0], n * (n + 1) / 2);
  EXPECT_EQ(w->all_reduce(int64_t(r), ReduceOp::max), int64_t(n - 1));
}

TEST(MpiComm, AsyncAllReduceCompletesOnWait) {
  auto w = world();
  Tensor x = Tensor::from<float>({4}, {1, 2, 3, 4});
  auto p = w->all_reduce_async(x, ReduceOp::sum);
  p->wait();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(x.data<float>()[i], float((i + 1) * w->size()));
}

TEST(MpiComm, AllGatherReduceScatterBroadcast) {
  auto w = world();
  const int r = w->rank(), n = w->size();
  Tensor mine = Tensor::from<double>({2}, {double(r), double(10 * r)});
  Tensor all = Tensor::zeros({2 * n}, DType::f64);
  w->all_gather(mine, all);
  for (int k = 0; k < n; ++k) {
    EXPECT_EQ(all.data<double>()[2 * k], double(k));
    EXPECT_EQ(all.data<double>()[2 * k + 1], double(10 * k));
  }
  // In place: this rank's chunk of the output is the input.
  Tensor buf = Tensor::zeros({n}, DType::f32);
  buf.data<float>()[r] = float(r + 1);
  w->all_gather(buf.view(r, {1}), buf);
  for (int k = 0; k < n; ++k) EXPECT_EQ(buf.data<float>()[k], float(k + 1));

  Tensor in = Tensor::empty({2 * n}, DType::f32);
  for (int k = 0; k < 2 * n; ++k) in.data<float>()[k] = float(k + r);
  Tensor out = Tensor::empty({2}, DType::f32);
  w->reduce_scatter(in, out);
  const float ranks_sum = float(n * (n - 1) / 2);
  EXPECT_EQ(out.data<float>()[0], float(n * (2 * r)) + ranks_sum);
  EXPECT_EQ(out.data<float>()[1], float(n * (2 * r + 1)) + ranks_sum);

  Tensor b = Tensor::from<float>({2}, {float(r), float(r)});
  w->broadcast(b, n - 1);
  EXPECT_EQ(b.data<float>()[0], float(n - 1));
  w->barrier();
}

// Host memory standing in for a device, so the host-staged communicator (device buffers,
// MPI over host copies) runs here exactly as it would with ranks sharing a GPU.
class HostAsDevice : public DeviceBackend {
 public:
  const char* name() const override { return "host-as-device"; }
  void* malloc(size_t bytes) override { return std::malloc(bytes); }
  void free(void* p) override { std::free(p); }
  void copy(void* dst, bool, const void* src, bool, size_t bytes) override {
    std::memmove(dst, src, bytes);
    ++copies;
  }
  void zero(void* p, size_t bytes) override { std::memset(p, 0, bytes); }
  int64_t copies = 0;
};

TEST(StagedComm, DeviceCollectivesEqualHostOnes) {
  auto w = world();
  auto backend = std::make_unique<HostAsDevice>();
  HostAsDevice* dev = backend.get();
  auto previous = swap_device_backend_for_testing(std::move(backend));
  {
    auto s = make_host_staged_communicator(w);
    EXPECT_EQ(s->backend(), "mpi (host-staged)");
    const int r = s->rank(), n = s->size();
    auto host = [](const Tensor& t) { return test_values(t.to(Device::cpu)); };

    Tensor x = Tensor::from<float>({3}, {float(r), 1.0f, float(-r)}).to(Device::cuda);
    s->all_reduce(x, ReduceOp::sum);
    EXPECT_EQ(host(x), (std::vector<double>{double(n * (n - 1) / 2), double(n), -double(n * (n - 1) / 2)}));
    EXPECT_GT(dev->copies, 0) << "the device buffer went through host copies";

    Tensor a = Tensor::from<double>({2}, {double(r), 1.0}).to(Device::cuda);
    {
      auto p = s->all_reduce_async(a, ReduceOp::max);
      p->wait();
    }
    EXPECT_EQ(host(a), (std::vector<double>{double(n - 1), 1.0}));

    // all_gather in place (this rank's chunk of the output is the input), then not.
    Tensor buf = Tensor::zeros({n}, DType::f32, Device::cuda);
    buf.view(r, {1}).copy_from(Tensor::from<float>({1}, {float(r + 1)}));
    s->all_gather(buf.view(r, {1}), buf);
    std::vector<double> want(static_cast<size_t>(n));
    for (int k = 0; k < n; ++k) want[size_t(k)] = k + 1;
    EXPECT_EQ(host(buf), want);

    Tensor in = Tensor::empty({2 * n}, DType::f32);
    for (int k = 0; k < 2 * n; ++k) in.data<float>()[k] = float(k + r);
    Tensor din = in.to(Device::cuda), out = Tensor::empty({2}, DType::f32, Device::cuda);
    const double ranks_sum = double(n * (n - 1) / 2);
    const std::vector<double> rs{double(n * (2 * r)) + ranks_sum, double(n * (2 * r + 1)) + ranks_sum};
    s->reduce_scatter(din, out);
    EXPECT_EQ(host(out), rs);
    Tensor out2 = Tensor::zeros({2}, DType::f32, Device::cuda);
    {
      // Destroyed without wait(): it completes, and the device buffer holds the result.
      auto p = s->reduce_scatter_async(din, out2);
    }
    EXPECT_EQ(host(out2), rs);

    Tensor b = Tensor::from<float>({2}, {float(r), float(r)}).to(Device::cuda);
    s->broadcast(b, n - 1);
    EXPECT_EQ(host(b), (std::vector<double>{double(n - 1), double(n - 1)}));
    // Host tensors pass straight to MPI.
    Tensor h = Tensor::from<float>({1}, {1.0f});
    s->all_reduce(h, ReduceOp::sum);
    EXPECT_EQ(h.data<float>()[0], float(n));
    s->barrier();
  }
  swap_device_backend_for_testing(std::move(previous));
}

TEST(MpiComm, MismatchedBuffersAreRejectedBeforeCommunicating) {
  auto w = world();
  Tensor in = Tensor::zeros({3}, DType::f32), out = Tensor::zeros({3 * w->size() + 1}, DType::f32);
  EXPECT_THROW(w->all_gather(in, out), Error);
  Tensor bf = Tensor::zeros({2}, DType::bf16);
  EXPECT_THROW(w->all_reduce(bf, ReduceOp::sum), Error);
}

TEST(Grid, TensorParallelRanksAreInnermost) {
  auto w = world();
  const int n = w->size();
  for (int tp = 1; tp <= n; ++tp) {
    if (n % tp) continue;
    auto g = ProcessGrid::from_world(w, {tp, n / tp});
    EXPECT_EQ(g->tp_rank(), g->rank() % tp);
    EXPECT_EQ(g->dp_rank(), g->rank() / tp);
    EXPECT_EQ(g->tp_group().size(), tp);
    EXPECT_EQ(g->dp_group().size(), n / tp);
    // Members of a tp group share dp_rank: the sum of world ranks over the group shows who.
    const int64_t tp_sum = g->tp_group().all_reduce(int64_t(g->rank()), ReduceOp::sum);
    const int64_t base = int64_t(g->dp_rank()) * tp;
    EXPECT_EQ(tp_sum, base * tp + int64_t(tp) * (tp - 1) / 2);
    const int64_t dp_sum = g->dp_group().all_reduce(int64_t(g->rank()), ReduceOp::sum);
    const int64_t dp = n / tp;
    EXPECT_EQ(dp_sum, int64_t(g->tp_rank()) * dp + int64_t(tp) * dp * (dp - 1) / 2);
  }
}

// The ranks of one node (all of them here, under one mpirun on one machine) number
// themselves 0..n-1 from MPI's shared-memory split, whatever the launcher exported: the
// number that picks each rank's GPU.
TEST(Grid, LocalRanksComeFromTheNode) {
  auto w = world();
  const NodeRank node = mpi_node_rank();
  EXPECT_EQ(node.local_size, w->size());
  EXPECT_EQ(node.local_rank, w->rank());
  auto g = ProcessGrid::create({1, w->size()});
  EXPECT_EQ(g->local_rank(), w->rank());
  EXPECT_EQ(g->local_size(), w->size());
  // Every rank a different local rank: the sum is 0 + 1 + ... + (n - 1).
  const int64_t n = w->size();
  EXPECT_EQ(w->all_reduce(int64_t(g->local_rank()), ReduceOp::sum), n * (n - 1) / 2);
}

TEST(Grid, WrongWorldSizeIsAClearError) {
  auto w = world();
  try {
    ProcessGrid::from_world(w, {2, w->size()});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("but the job has " + std::to_string(w->size()) + " ranks"),
              std::string::npos)
        << e.what();
  }
}

TEST(GradReducer, BucketsStartAsTheBackwardReportsAndSumOverRanks) {
  auto w = world();
  // Ten "parameters" of 1..10 elements; buckets of at least 7 elements, cut from the end.
  std::vector<int64_t> starts;
  int64_t n = 0;
  for (int64_t p = 1; p <= 10; ++p) starts.push_back(n), n += p;
  Tensor g = Tensor::empty({n}, DType::f32);
  for (int64_t i = 0; i < n; ++i) g.data<float>()[i] = float(i + w->rank());
  GradReducer r(g, starts, *w, 7);
  EXPECT_GT(r.n_buckets(), 4u);
  for (size_t first = 10; first-- > 0;) r.ready_from(first);  // as a backward reports
  r.finish();
  const float ranks = float(w->size() * (w->size() - 1) / 2);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(g.data<float>()[i], float(w->size() * i) + ranks) << i;
  // Reusable for the next step; finish() alone starts every bucket.
  r.finish();
  EXPECT_EQ(g.data<float>()[1], float(w->size()) * (float(w->size()) + ranks));
}

TEST(Regions, GatherAndScatterColumns) {
  auto w = world();
  auto g = ProcessGrid::from_world(w, {w->size(), 1});
  const int tp = g->tp(), r = g->tp_rank();
  Tensor local = Tensor::empty({2, 3}, DType::f32);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) local.data<float>()[i * 3 + j] = float(100 * i + 10 * r + j);
  Tensor full = Tensor::empty({2, 3 * tp}, DType::f32);
  gather_from_tp_region(*g, local, full);
  for (int i = 0; i < 2; ++i)
    for (int c = 0; c < 3 * tp; ++c) EXPECT_EQ(full.data<float>()[i * 3 * tp + c], float(100 * i + 10 * (c / 3) + c % 3));
  Tensor back = Tensor::empty({2, 3}, DType::f32);
  scatter_to_tp_region(*g, full, back);
  for (int k = 0; k < 6; ++k) EXPECT_EQ(back.data<float>()[k], local.data<float>()[k]);
}

}  // namespace
}  // namespace lethe
