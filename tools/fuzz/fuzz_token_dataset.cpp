// Fuzz target: token datasets (HDF5). The input is opened as `lethe unlearn` and `lethe
// train` open a data file (load_token_dataset against a 256-token vocabulary), then every
// sequence of the packed and unpacked chunkings is read, as training and evaluation do.
// libhdf5 is a system library without sanitizer instrumentation: a memory error inside it
// shows only as a crash (SEGV), not as an ASan report.
#include <cstdint>
#include <exception>
#include <vector>

#include "engine/data/sequence_sampler.h"
#include "engine/data/token_dataset.h"
#include "tools/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lethe::fuzz::write_scratch("input.h5", data, size);
  try {
    const lethe::TokenDataset ds = lethe::load_token_dataset(path, 256);
    for (bool pack : {false, true}) {
      lethe::SamplerConfig cfg;
      cfg.seq_len = 16;
      cfg.pack = pack;
      cfg.shuffle = false;
      const lethe::SequenceSampler s(ds, cfg);
      std::vector<int32_t> tok(16), tgt(16);
      for (int64_t i = 0; i < s.n_sequences() && i < 4096; ++i) s.sequence(i, tok.data(), tgt.data());
    }
  } catch (const std::exception&) {
  }
  return 0;
}
