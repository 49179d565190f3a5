#include "engine/plan/host_fit.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/core/error.h"

namespace lethe::plan {
namespace {

double mem_available() {
  std::ifstream in("/proc/meminfo");
  for (std::string key; in >> key;) {
    double kb = 0;
    std::string unit;
    in >> kb >> unit;
    if (key == "MemAvailable:") return kb * 1024;
  }
  const double pages = double(::sysconf(_SC_PHYS_PAGES)), page = double(::sysconf(_SC_PAGE_SIZE));
  return pages > 0 && page > 0 ? pages * page : 0;
}

int local_processes() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    const char* v = std::getenv(var);
    if (!v) continue;
    const int n = std::atoi(v);  // SLURM may write "4(x2)": the leading count is the one
    if (n >= 1) return n;
  }
  return 1;
}

std::string gib(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  return buf;
}

}  // namespace

double cpu_process_bytes(const PlanInput& in) {
  PlanInput f = in;
  f.precision = Precision::f32;
  const MemoryPlan m = memory_plan(f);
  const bool sharded = in.zero1 && in.dp > 1;
  const double master = in.precision == Precision::bf16 && !sharded ? 4.0 * double(m.params.total) : 0.0;
  return m.total() + master;
}

double host_bytes_per_process() {
  const double avail = mem_available();
  return avail > 0 ? avail / double(local_processes()) : 0;
}

void check_host_fit(const PlanInput& in, const std::string& what) {
  try {
    validate(in);
  } catch (const Error&) {
    return;  // a grid or batch the model cannot take: the run itself says why
  }
  const double need = cpu_process_bytes(in), have = host_bytes_per_process();
  if (have <= 0 || need <= have) return;
  PlanInput f = in;
  f.precision = Precision::f32;
  const MemoryPlan m = memory_plan(f);
  std::ostringstream parts;
  parts << "weights " << gib(m.weights) << ", gradients " << gib(m.grads) << ", optimizer state "
        << gib(m.master + m.moments + m.opt_scratch + (need - m.total())) << ", activations " << gib(m.activations())
        << " (micro-batch " << in.micro_batch << " x " << in.seq_len << " tokens)";
  if (m.ref_weights + m.ref_acts > 0) parts << ", frozen reference " << gib(m.ref_weights + m.ref_acts);
  LETHE_FAIL(what, ": this run needs about ", gib(need), " per process by its plan (", parts.str(), "), and this node ",
             "offers ", gib(have), " per process (available memory over ", local_processes(), " local process",
             local_processes() == 1 ? "" : "es", "); nothing was started. Lower train.batch_size or data.seq_len, or ",
             "split the model over more processes with parallel.tp (`lethe plan` prints the breakdown)");
}

}  // namespace lethe::plan
