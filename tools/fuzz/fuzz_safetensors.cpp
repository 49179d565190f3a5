// Fuzz target: safetensors header and data validation (SafetensorsFile::open), then every
// tensor read the importer would do.
#include <cstdint>
#include <exception>

#include "engine/io/safetensors.h"
#include "tools/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lethe::fuzz::write_scratch("input.safetensors", data, size);
  try {
    const lethe::SafetensorsFile f = lethe::SafetensorsFile::open(path);
    for (const std::string& name : f.names()) {
      try {
        (void)f.tensor(name);
      } catch (const std::exception&) {
      }
    }
  } catch (const std::exception&) {
    // A clear error is the expected outcome for bad input; crashes, sanitizer reports,
    // leaks and runaway allocations are what the fuzzer looks for.
  }
  return 0;
}
