// A device made of host memory and the CPU's kernels, for running the model's device path
// on a machine without a GPU. Its tensors are device tensors in every respect the engine
// can see (Device::cuda, memory from the caching allocator, data<T>() refused), so a host
// loop left in the device path fails as it would on a GPU. Each op copies its tensors to
// host memory (bf16 widened to f32), runs the CPU kernel and copies the outputs back,
// rounding to the output's dtype: for the bf16 policy that is exactly where the CPU
// emulation rounds (engine/core/precision.h), so the device model on this stand-in must
// reproduce the emulated model bit for bit, and a CUDA run is then compared against the
// same emulation. Slow (every op round-trips through host copies): for tests only.
#pragma once
#include <memory>

#include "engine/core/device_memory.h"
#include "kernels/device_ops.h"

namespace lethe {

// Installs the host-staged memory backend and kernels for its lifetime, restoring what was
// registered before (the CUDA backend in a CUDA build). Every device tensor allocated while
// it is installed must be freed before it is destroyed.
// Whether a ScopedHostStagedDevice is installed now (the process grid then stages device
// collectives through host memory without looking for a GPU).
bool host_staged_device_installed();

// Marks the copies made on this thread in its lifetime as the stand-in's own staging (not
// counted in host_transfers()).
class HostStagedStaging {
 public:
  HostStagedStaging();
  ~HostStagedStaging();
  HostStagedStaging(const HostStagedStaging&) = delete;
  HostStagedStaging& operator=(const HostStagedStaging&) = delete;
};

class ScopedHostStagedDevice {
 public:
  ScopedHostStagedDevice();
  ~ScopedHostStagedDevice();
  ScopedHostStagedDevice(const ScopedHostStagedDevice&) = delete;
  ScopedHostStagedDevice& operator=(const ScopedHostStagedDevice&) = delete;
  // Ops the device ran since installation (each `ops::` call routed to it counts once).
  int64_t ops_run() const;
  // Copies between host and device memory that the engine made, plus the ops that return
  // a number to the host (sum_squares, find_nonfinite): each is a point where a CUDA host
  // waits for the device (a device-to-host copy, or a copy from pageable host memory, which
  // drains the stream first). Not counted: the ops' own staging, and the staged
  // collectives', which stand in for NCCL's (those do not stop the host). A running
  // count over the process: tests take differences.
  int64_t host_transfers() const;

 private:
  class Ops;
  Ops* ops_ = nullptr;  // owned by the registry while installed
  std::unique_ptr<DeviceBackend> prev_backend_;
  std::unique_ptr<DeviceOps> prev_ops_;
};

}  // namespace lethe
