#include "kernels/cuda/arena.h"

#include "kernels/cuda/common.cuh"

namespace lethe::cuda {

Arena::Arena(size_t bytes) : cap_((bytes + kAlign - 1) / kAlign * kAlign) {
  base_ = static_cast<char*>(device_malloc(cap_));
}
Arena::~Arena() { device_free(base_); }

void* Arena::alloc(size_t bytes, const char* what) {
  const size_t need = (bytes + kAlign - 1) / kAlign * kAlign;
  LETHE_CHECK(need <= cap_ - used_, "device arena: ", what, " needs ", bytes, " bytes, ", cap_ - used_, " of ", cap_,
              " left");
  void* p = base_ + used_;
  used_ += need;
  if (used_ > peak_) peak_ = used_;
  return p;
}

void Arena::release(size_t mark) {
  LETHE_CHECK(mark <= used_, "device arena: release to ", mark, " above the top ", used_);
  used_ = mark;
}

}  // namespace lethe::cuda
