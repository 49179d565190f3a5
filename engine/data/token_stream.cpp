#include "engine/data/token_stream.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/core/rng.h"

namespace lethe {
namespace fs = std::filesystem;

TokenStream load_token_stream(const std::string& path, const std::string& format, int64_t vocab_size) {
  std::error_code ec;
  LETHE_CHECK(fs::is_regular_file(path, ec), path, ": no such token file");
  const uint64_t size = fs::file_size(path, ec);
  LETHE_CHECK(!ec, path, ": cannot read its size: ", ec.message());
  size_t width = 0;
  if (format == "bytes") width = 1;
  else if (format == "u16") width = 2;
  else if (format == "i32") width = 4;
  else LETHE_FAIL(path, ": unknown token format '", format, "' (bytes, u16, i32)");
  LETHE_CHECK(size % width == 0, path, ": ", size, " bytes is not a whole number of ", width, "-byte tokens");
  if (format == "bytes")
    LETHE_CHECK(vocab_size >= 256, path, ": byte-level tokens need vocab_size >= 256, the model has ", vocab_size);
  std::vector<char> raw(size);
  std::ifstream in(path, std::ios::binary);
  LETHE_CHECK(in.good(), path, ": cannot open for reading");
  in.read(raw.data(), std::streamsize(size));
  LETHE_CHECK(in.good() || size == 0, path, ": read error");
  TokenStream s;
  s.source = path;
  const size_t n = size / width;
  s.tokens.resize(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t id = 0;
    if (width == 1) {
      id = uint8_t(raw[i]);
    } else if (width == 2) {
      uint16_t v;
      std::memcpy(&v, raw.data() + 2 * i, 2);
      id = v;
    } else {
      int32_t v;
      std::memcpy(&v, raw.data() + 4 * i, 4);
      id = v;
    }
    LETHE_CHECK(id >= 0 && id < vocab_size, path, ": token ", id, " at index ", i,
                " is outside the model's vocabulary [0, ", vocab_size, ")");
    s.tokens[i] = int32_t(id);
  }
  return s;
}

WindowSampler::WindowSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed)
    : stream_(stream), seq_len_(seq_len), seed_(seed) {
  LETHE_CHECK(seq_len > 0, "seq_len must be positive, got ", seq_len);
  LETHE_CHECK(int64_t(stream.tokens.size()) > seq_len, stream.source, ": ", stream.tokens.size(),
              " tokens is too short for seq_len ", seq_len, " (needs at least ", seq_len + 1, ")");
}

void WindowSampler::batch(int64_t step, Tensor& tokens, Tensor& targets) const {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  LETHE_CHECK(T == seq_len_, "WindowSampler: batch has T=", T, ", sampler was built for ", seq_len_);
  check_shape(targets, {B, T}, "WindowSampler::batch", "targets");
  const Philox rng(seed_, uint64_t(step));
  const uint64_t starts = uint64_t(stream_.tokens.size()) - uint64_t(T);  // window needs T + 1 tokens
  int32_t *x = tokens.data<int32_t>(), *y = targets.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = int64_t(rng.below(uint64_t(b), starts));
    std::memcpy(x + b * T, stream_.tokens.data() + s, sizeof(int32_t) * T);
    std::memcpy(y + b * T, stream_.tokens.data() + s + 1, sizeof(int32_t) * T);
  }
}

}  // namespace lethe
