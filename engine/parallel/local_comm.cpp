#include "engine/parallel/communicator.h"

namespace lethe {
namespace {

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  void all_reduce(Tensor&, ReduceOp) override {}
  void all_gather(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, 1, "all_gather");
    if (in.raw() != out.raw()) out.copy_from(in.reshape(out.shape()));
  }
  void reduce_scatter(const Tensor& in, Tensor& out) override {
    check_collective_args(in, out, 1, 1, "reduce_scatter");
    if (in.raw() != out.raw()) out.copy_from(in.reshape(out.shape()));
  }
  void broadcast(Tensor&, int root) override { LETHE_CHECK(root == 0, "broadcast: root ", root, " in a group of 1"); }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace lethe
