#include "engine/core/device_memory.h"

#include "engine/core/error.h"

namespace lethe {

namespace {
constexpr size_t kSmallRound = 512, kLargeLimit = size_t(1) << 20, kLargeRound = size_t(2) << 20;

double mib(size_t b) { return double(b) / double(1 << 20); }

struct Registry {
  std::unique_ptr<DeviceBackend> backend;
  std::unique_ptr<CachingAllocator> allocator;
};
// Never destroyed: a tensor in static storage may release its block after main returns.
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}
}  // namespace

size_t CachingAllocator::rounded(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t unit = bytes > kLargeLimit ? kLargeRound : kSmallRound;
  return (bytes + unit - 1) / unit * unit;
}

CachingAllocator::~CachingAllocator() {
  // Blocks still handed out belong to tensors that outlive the allocator (static
  // destruction order); only the cache is ours to return.
  for (auto& [size, p] : free_) backend_.free(p);
}

void* CachingAllocator::backend_malloc(size_t bytes) {
  void* p = backend_.malloc(bytes);
  if (!p) {
    // Out of memory: what the cache holds may be enough once returned and coalesced.
    for (auto& [size, q] : free_) {
      backend_.free(q);
      ++stats_.backend_frees;
    }
    free_.clear();
    stats_.cached = 0;
    p = backend_.malloc(bytes);
  }
  LETHE_CHECK(p, backend_.name(), ": out of memory allocating ", mib(bytes), " MiB (", mib(stats_.in_use),
              " MiB in use by lethe's tensors, peak ", mib(stats_.peak_in_use),
              " MiB); `lethe plan` shows what a run needs per GPU");
  ++stats_.backend_mallocs;
  return p;
}

void* CachingAllocator::allocate(size_t bytes) {
  const size_t size = rounded(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  void* p = nullptr;
  size_t got = size;
  auto it = free_.lower_bound(size);
  if (it != free_.end() && it->first <= 2 * size) {
    got = it->first;
    p = it->second;
    free_.erase(it);
    stats_.cached -= got;
  } else {
    p = backend_malloc(size);
  }
  live_[p] = {got, bytes};
  stats_.in_use += got;
  stats_.requested += bytes;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  stats_.peak_requested = std::max(stats_.peak_requested, stats_.requested);
  stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.in_use + stats_.cached);
  return p;
}

void CachingAllocator::release(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  LETHE_CHECK(it != live_.end(), backend_.name(), ": release of a block this allocator did not hand out");
  const size_t size = it->second.size;
  stats_.requested -= it->second.requested;
  live_.erase(it);
  stats_.in_use -= size;
  stats_.cached += size;
  free_.emplace(size, p);
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [size, p] : free_) {
    backend_.free(p);
    ++stats_.backend_frees;
  }
  free_.clear();
  stats_.cached = 0;
}

void CachingAllocator::reset_peaks() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_in_use = stats_.in_use;
  stats_.peak_reserved = stats_.in_use + stats_.cached;
  stats_.peak_requested = stats_.requested;
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void register_device_backend(std::unique_ptr<DeviceBackend> backend) {
  Registry& r = registry();
  r.allocator.reset();
  r.backend = std::move(backend);
  if (r.backend) r.allocator = std::make_unique<CachingAllocator>(*r.backend);
}

bool device_backend_registered() { return registry().backend != nullptr; }

CachingAllocator& device_allocator() {
  Registry& r = registry();
  LETHE_CHECK(r.allocator, "CUDA tensors need the CUDA backend, which this build does not include");
  return *r.allocator;
}

std::unique_ptr<DeviceBackend> swap_device_backend_for_testing(std::unique_ptr<DeviceBackend> backend) {
  Registry& r = registry();
  r.allocator.reset();
  std::unique_ptr<DeviceBackend> old = std::move(r.backend);
  r.backend = std::move(backend);
  if (r.backend) r.allocator = std::make_unique<CachingAllocator>(*r.backend);
  return old;
}

}  // namespace lethe
