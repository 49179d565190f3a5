// A failed rank ends the whole job. An exception on one rank would otherwise leave every
// other rank waiting forever in its next collective; instead the failing rank prints
// "rank N: error: <message>" and aborts the job (MPI_Abort), which the launcher turns into
// a non-zero exit of every rank within seconds.
#pragma once
#include <functional>
#include <string>

namespace lethe {

// Prints the message with the world rank and aborts every rank (exit code `code`). In a
// one-process run it prints and exits.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

// The same end for this rank from a thread other than the main one (the NCCL watchdog): MPI
// is initialised FUNNELED, so only the main thread may call MPI_Abort. Prints the message
// with the rank and exits the process with `code`; the launcher ends the job (mpirun on a
// rank's non-zero exit; otherwise each peer's own collective timeout ends it).
[[noreturn]] void abort_rank(const std::string& message, int code = 1);

// Runs fn. In a multi-rank job (MPI initialised, world > 1) an exception from fn aborts the
// job; in a one-process run it propagates unchanged, so the CLI reports it as usual.
int run_or_abort_job(const std::function<int()>& fn);

// True once this process joined a multi-rank MPI job.
bool in_multi_rank_job();

}  // namespace lethe
