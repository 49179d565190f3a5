// A deadline on reading an untrusted file through a library call that cannot be
// interrupted. libhdf5 loops forever on some malformed files (a corrupt global heap makes
// an attribute read spin; the token-dataset fuzzer found one in 400 inputs), and a job that
// hangs at start-up holds its allocation until the walltime. While a ReadDeadline is alive
// a watchdog thread watches it; if the read is still running when the deadline passes,
// the process prints an error naming the file and exits with status 1. Nothing is written
// at that point that could be lost: reads happen before the outputs they feed.
//
// The limit is LETHE_READ_TIMEOUT_S seconds when set (0 disables the watchdog), otherwise
// 120 s plus 1 s per 10 MB of the file, so a large checkpoint shard on a slow network
// file system is never cut short.
#pragma once
#include <cstdint>
#include <string>

namespace lethe {

class ReadDeadline {
 public:
  ReadDeadline(const std::string& path, int64_t file_bytes);
  ~ReadDeadline();
  ReadDeadline(const ReadDeadline&) = delete;
  ReadDeadline& operator=(const ReadDeadline&) = delete;

  // The limit in seconds for a file of this size (0: no limit).
  static double limit_seconds(int64_t file_bytes);

 private:
  uint64_t id_ = 0;
};

}  // namespace lethe
