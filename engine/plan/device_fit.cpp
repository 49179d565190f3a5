#include "engine/plan/device_fit.h"

#include <cstdio>
#include <sstream>

#include "engine/core/device_memory.h"
#include "engine/core/error.h"

namespace lethe::plan {
namespace {
std::string gib(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  return buf;
}
// GiB, or MiB below one GiB (a small run's peak and plan differ in the third digit).
std::string bytes_str(double b) {
  if (b >= double(1ull << 30)) return gib(b);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1ull << 20));
  return buf;
}
}  // namespace

void check_device_fit(const PlanInput& in, const std::string& what, const std::string& device, double device_bytes) {
  try {
    validate(in);
  } catch (const Error&) {
    return;
  }
  const MemoryPlan m = memory_plan(in);
  const double usable = device_bytes * (1 - kDeviceHeadroom);
  if (device_bytes <= 0 || m.total() <= usable) return;
  std::ostringstream parts;
  parts << "weights " << gib(m.weights) << ", gradients " << gib(m.grads) << ", optimizer state "
        << gib(m.master + m.moments + m.opt_scratch) << ", activations " << gib(m.activations()) << " (micro-batch "
        << in.micro_batch << " x " << in.seq_len << " tokens, " << in.recompute << " of " << in.model.n_layers
        << " layers recomputed)";
  if (m.ref_weights + m.ref_acts > 0) parts << ", frozen reference " << gib(m.ref_weights + m.ref_acts);
  std::ostringstream fix;
  fix << "Lower train.batch_size or data.seq_len";
  if (in.recompute < in.model.n_layers) {
    PlanInput all = in;
    all.recompute = in.model.n_layers;
    const int64_t r = fitting_recompute(in, usable);
    fix << (r >= 0 ? ", set train.recompute: " + std::to_string(r) + " (the plan then fits)"
                   : ", recompute layers with train.recompute (all of them: " + gib(memory_plan(all).total()) + ")");
  }
  fix << ", or split the model over more GPUs with parallel.tp (weights, gradients and activations) or "
         "parallel.dp (ZeRO-1 shards the optimizer state)";
  LETHE_FAIL(what, ": this run needs about ", gib(m.total()), " per GPU by its plan (", parts.str(), "), and ", device,
             " offers ", gib(usable), " (", gib(device_bytes), " less ", int(kDeviceHeadroom * 100),
             "% for workspaces and the CUDA context); nothing was started. ", fix.str(),
             " (`lethe plan` prints the breakdown)");
}

std::string device_memory_line(const std::string& phase, const CachingAllocator::Stats& st, double planned_bytes) {
  std::string plan;
  if (planned_bytes > 0) {
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.3f", double(st.peak_requested) / planned_bytes);
    plan = " (plan " + bytes_str(planned_bytes) + ", measured/plan " + ratio + ")";
  }
  return "device memory, " + phase + ": peak " + bytes_str(double(st.peak_requested)) + " in lethe's tensors" + plan +
         "; allocator blocks: peak " + bytes_str(double(st.peak_in_use)) + " in use, " +
         bytes_str(double(st.peak_reserved)) + " reserved";
}

}  // namespace lethe::plan
