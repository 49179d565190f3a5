// Refusing a run that cannot fit this machine's memory, before anything is allocated, with
// the plan's numbers (engine/plan/memory_plan.h). With memory overcommit a too-large run
// would otherwise start, and the kernel would kill it when its pages are touched, minutes in.
#pragma once
#include <string>

#include "engine/plan/memory_plan.h"

namespace lethe::plan {

// Bytes one process of the CPU engine holds for `in`: it keeps every tensor in f32 (the
// bf16 policy is emulated on f32 tensors), so the f32 plan, plus the fp32 master copy the
// optimizer keeps under bf16.
double cpu_process_bytes(const PlanInput& in);

// Memory this node offers its processes: MemAvailable (else physical memory), divided by
// the processes launched on the node (Open MPI's, MPICH's or SLURM's local count; 1
// without one). 0 when unknown.
double host_bytes_per_process();

// Throws lethe::Error naming `what` (the config), the plan's parts, the memory, and what
// to change, when cpu_process_bytes(in) exceeds host_bytes_per_process().
void check_host_fit(const PlanInput& in, const std::string& what);

}  // namespace lethe::plan
