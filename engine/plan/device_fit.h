// Refusing a GPU run that cannot fit its device, before anything is allocated, with the
// plan's numbers (engine/plan/memory_plan.h, the GPU engine's per-device bytes). Without
// it a too-large run would fail in cudaMalloc at its first large buffer, after the model
// was loaded, or minutes in at the first backward.
#pragma once
#include <string>

#include "engine/core/device_memory.h"
#include "engine/plan/memory_plan.h"

namespace lethe::plan {

// The share of device memory the plan leaves free for cuBLAS and NCCL workspaces, the
// CUDA context and fragmentation: `lethe plan`'s default --headroom.
constexpr double kDeviceHeadroom = 0.10;

// Throws lethe::Error naming `what` (the config), the plan's parts, the device and what to
// change, when memory_plan(in).total() exceeds device_bytes less the headroom. A grid or
// batch the plan cannot take is left to the run's own errors.
void check_device_fit(const PlanInput& in, const std::string& what, const std::string& device, double device_bytes);

// What a device run reports at the end of a phase ("training", "final evaluation"), from
// the caching allocator's stats over it: the peak of bytes in lethe's tensors as they
// asked for them (what the plan counts), next to the plan's total when planned_bytes > 0,
// then the peaks of rounded blocks in use and reserved (with the cache). cuBLAS, NCCL and
// the CUDA context come on top of all of them.
std::string device_memory_line(const std::string& phase, const CachingAllocator::Stats& st, double planned_bytes);

}  // namespace lethe::plan
