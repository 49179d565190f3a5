#include "engine/parallel/communicator.h"

namespace lethe {
namespace {
class DonePending : public PendingCollective {
 public:
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_reduce_async(Tensor& x, ReduceOp op) {
  all_reduce(x, op);
  return std::make_unique<DonePending>();
}

std::unique_ptr<PendingCollective> Communicator::all_gather_async(const Tensor& in, Tensor& out) {
  all_gather(in, out);
  return std::make_unique<DonePending>();
}

std::unique_ptr<PendingCollective> Communicator::reduce_scatter_async(const Tensor& in, Tensor& out) {
  reduce_scatter(in, out);
  return std::make_unique<DonePending>();
}

double Communicator::all_reduce(double v, ReduceOp op) {
  if (size() == 1) return v;
  Tensor t = Tensor::from<double>({1}, {v});
  all_reduce(t, op);
  return t.data<double>()[0];
}

int64_t Communicator::all_reduce(int64_t v, ReduceOp op) {
  if (size() == 1) return v;
  // f64 holds every count a batch can have exactly (< 2^53).
  return int64_t(all_reduce(double(v), op));
}

void check_collective_args(const Tensor& in, const Tensor& out, int64_t in_mult, int64_t out_mult, const char* op) {
  LETHE_CHECK(in.defined() && out.defined(), op, ": undefined tensor");
  LETHE_CHECK(in.device() == out.device(), op, ": input ", in.describe(), " and output ", out.describe(),
              " are on different devices (one collective moves host or device memory, not both)");
  LETHE_CHECK(in.dtype() == out.dtype(), op, ": input ", in.describe(), " and output ", out.describe(),
              " differ in dtype");
  LETHE_CHECK(in.numel() * in_mult == out.numel() * out_mult, op, ": input ", in.describe(), " and output ",
              out.describe(), " do not match the group size");
}

}  // namespace lethe
