#include "engine/parallel/staged_comm.h"

#include <cstdio>
#include <exception>

#include "kernels/host_staged_device.h"

namespace lethe {
namespace {

bool on_device(const Tensor& t) { return t.device() != Device::cpu; }

// A host collective in flight on staged copies; completing it copies the result back to
// the device buffer. Destroying it unfinished completes it, as every pending collective
// must (the device buffer is written by then).
class StagedPending : public PendingCollective {
 public:
  // staged: the host buffer the result lands in; input: a staged input the host
  // collective still reads (MPI's non-blocking calls keep only pointers).
  StagedPending(std::unique_ptr<PendingCollective> host, Tensor staged, Tensor device, Tensor input = Tensor())
      : host_(std::move(host)), staged_(std::move(staged)), device_(std::move(device)), input_(std::move(input)) {}
  // A failure here must not escape a destructor (std::terminate would skip the abort that
  // stops the other ranks): report it; the collective's own timeout has ended the job.
  ~StagedPending() override {
    if (done_) return;
    try {
      finish();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lethe: %s\n", e.what());
    }
  }
  void wait() override {
    if (!done_) finish();
  }

 private:
  void finish() {
    const HostStagedStaging staging;  // stands in for NCCL: the host does not wait for it
    done_ = true;
    host_->wait();
    device_.copy_from(staged_);
  }
  std::unique_ptr<PendingCollective> host_;
  Tensor staged_, device_, input_;
  bool done_ = false;
};

class HostStagedCommunicator : public Communicator {
 public:
  explicit HostStagedCommunicator(std::shared_ptr<Communicator> host) : host_(std::move(host)) {}
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string backend() const override { return host_->backend() + " (host-staged)"; }

  void all_reduce(Tensor& x, ReduceOp op) override {
    if (!on_device(x)) return host_->all_reduce(x, op);
    const HostStagedStaging staging;
    Tensor h = x.to(Device::cpu);
    host_->all_reduce(h, op);
    x.copy_from(h);
  }
  std::unique_ptr<PendingCollective> all_reduce_async(Tensor& x, ReduceOp op) override {
    if (!on_device(x)) return host_->all_reduce_async(x, op);
    const HostStagedStaging staging;
    Tensor h = x.to(Device::cpu);
    auto p = host_->all_reduce_async(h, op);
    return std::make_unique<StagedPending>(std::move(p), h, x);
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, size(), 1, "all_gather");
    if (!on_device(in) && !on_device(out)) return host_->all_gather(in, out);
    const HostStagedStaging staging;
    // `in` may be a view of out's own chunk: stage it first, then gather into a host copy.
    const Tensor hin = in.to(Device::cpu);
    Tensor hout = Tensor::empty(out.shape(), out.dtype());
    host_->all_gather(hin, hout);
    out.copy_from(hout);
  }
  std::unique_ptr<PendingCollective> all_gather_async(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, size(), 1, "all_gather_async");
    if (!on_device(in) && !on_device(out)) return host_->all_gather_async(in, out);
    const HostStagedStaging staging;
    const Tensor hin = in.to(Device::cpu);  // staged first: `in` may be a view of out's chunk
    Tensor hout = Tensor::empty(out.shape(), out.dtype());
    auto p = host_->all_gather_async(hin, hout);
    return std::make_unique<StagedPending>(std::move(p), hout, out, hin);
  }
  void reduce_scatter(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size(), "reduce_scatter");
    if (!on_device(in) && !on_device(out)) return host_->reduce_scatter(in, out);
    const HostStagedStaging staging;
    const Tensor hin = in.to(Device::cpu);
    Tensor hout = Tensor::empty(out.shape(), out.dtype());
    host_->reduce_scatter(hin, hout);
    out.copy_from(hout);
  }
  std::unique_ptr<PendingCollective> reduce_scatter_async(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, size(), "reduce_scatter_async");
    if (!on_device(in) && !on_device(out)) return host_->reduce_scatter_async(in, out);
    const HostStagedStaging staging;
    const Tensor hin = in.to(Device::cpu);
    Tensor hout = Tensor::empty(out.shape(), out.dtype());
    auto p = host_->reduce_scatter_async(hin, hout);
    return std::make_unique<StagedPending>(std::move(p), hout, out, hin);
  }
  void broadcast(Tensor& x, int root) override {
    if (!on_device(x)) return host_->broadcast(x, root);
    const HostStagedStaging staging;
    Tensor h = x.to(Device::cpu);
    host_->broadcast(h, root);
    x.copy_from(h);
  }
  void barrier() override { host_->barrier(); }
  void check_async_error() override { host_->check_async_error(); }

 private:
  std::shared_ptr<Communicator> host_;
};

}  // namespace

std::unique_ptr<Communicator> make_host_staged_communicator(std::shared_ptr<Communicator> host) {
  return std::make_unique<HostStagedCommunicator>(std::move(host));
}

}  // namespace lethe
