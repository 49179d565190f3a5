// Failure drill: one rank fails while the others wait in a collective that can never
// complete. The job must end with that rank's message and a non-zero exit, not hang.
//   par_fail_drill exception|nan|badfile|hang FAILING_RANK
// hang: the rank never returns; the others' collective times out
// (LETHE_COLLECTIVE_TIMEOUT_S) and aborts the job.
#include <chrono>
#include <cmath>
#include <thread>
#include <cstdio>
#include <string>

#include "engine/io/checkpoint.h"
#include "engine/parallel/failure.h"
#include "engine/parallel/mpi_comm.h"

int main(int argc, char** argv) {
  using namespace lethe;
  const std::string mode = argc > 1 ? argv[1] : "exception";
  const int bad = argc > 2 ? std::atoi(argv[2]) : 1;
  auto world = mpi_world();
  return run_or_abort_job([&] {
    // Everyone meets once, so the failure happens mid-job, not during start-up.
    world->barrier();
    if (world->rank() == bad) {
      if (mode == "exception") LETHE_FAIL("injected failure");
      if (mode == "nan") {
        const double loss = std::nan("");
        LETHE_CHECK(std::isfinite(loss), "loss is ", loss, "; stopping before the update");
      }
      if (mode == "badfile") Checkpoint::open("/nonexistent/lethe-drill-checkpoint");
      if (mode == "hang")
        while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    Tensor x = Tensor::zeros({4}, DType::f32);
    world->all_reduce(x, ReduceOp::sum);  // the failed rank never joins
    std::printf("rank %d: finished (the drill expected a failure)\n", world->rank());
    return 0;
  });
}
