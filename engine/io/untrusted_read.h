// Guards a read of an untrusted file through a library that is not robust against
// malformed input. libhdf5 (1.10) loops forever, crashes or overruns its buffers on some
// crafted files (fuzz_token_dataset found all three within minutes; docs/reliability.md).
// While an UntrustedRead is alive:
//   - a watchdog thread holds a deadline: if the read is still running when it passes,
//     the process prints an error naming the file and exits with status 1;
//   - a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, and SIGABRT from glibc's heap checks) is
//     reported as an error naming the file, with exit status 1, instead of a bare
//     segmentation fault.
// Nothing is written at that point that could be lost: reads happen before the outputs
// they feed, and every save is atomic. A memory overrun that does not crash is not caught
// here; that needs the parser in a separate process.
//
// The deadline is LETHE_READ_TIMEOUT_S seconds when set (0 disables the watchdog),
// otherwise 120 s plus 1 s per 10 MB of the file, so a large checkpoint shard on a slow
// network file system is never cut short.
#pragma once
#include <cstdint>
#include <string>

namespace lethe {

class UntrustedRead {
 public:
  UntrustedRead(const std::string& path, int64_t file_bytes);
  ~UntrustedRead();
  UntrustedRead(const UntrustedRead&) = delete;
  UntrustedRead& operator=(const UntrustedRead&) = delete;

  // The deadline in seconds for a file of this size (0: no deadline).
  static double limit_seconds(int64_t file_bytes);

 private:
  uint64_t id_ = 0;
  const char* prev_message_ = nullptr;
};

}  // namespace lethe
