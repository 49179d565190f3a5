#include "engine/parallel/grad_reducer.h"

namespace lethe {

GradReducer::GradReducer(Tensor flat, std::vector<int64_t> starts, Communicator& dp, int64_t bucket_elems)
    : dp_(dp) {
  LETHE_CHECK(flat.ndim() == 1 && !starts.empty(), "GradReducer: expected a flat buffer and parameter offsets");
  int64_t hi = flat.numel();
  size_t p = starts.size();
  while (p > 0) {
    size_t lo = p - 1;
    while (lo > 0 && hi - starts[lo] < bucket_elems) --lo;
    const int64_t begin = starts[lo];
    if (hi > begin) buckets_.push_back({lo, flat.view(begin, {hi - begin}), nullptr, false});
    hi = begin;
    p = lo;
  }
}

void GradReducer::ready_from(size_t first) {
  if (dp_.size() == 1) return;
  while (next_ < buckets_.size() && buckets_[next_].first_param >= first) {
    Bucket& b = buckets_[next_++];
    b.pending = dp_.all_reduce_async(b.view, ReduceOp::sum);
    b.started = true;
  }
}

void GradReducer::finish() {
  if (dp_.size() == 1) return;
  ready_from(0);
  for (Bucket& b : buckets_) {
    if (b.pending) b.pending->wait();
    b.pending.reset();
    b.started = false;
  }
  next_ = 0;
}

}  // namespace lethe
