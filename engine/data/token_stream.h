// A flat stream of token ids read from disk, and a sampler that cuts training windows
// from it. The HDF5 token datasets with document offsets come later; this covers raw
// token files (llm.c style) and byte-level text.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace lethe {

struct TokenStream {
  std::vector<int32_t> tokens;
  std::string source;
};

// format: "bytes" (each byte of the file is a token, vocab >= 256), "u16" or "i32"
// (little-endian token ids). Every id is checked against vocab_size; the error names the
// file and the offset.
TokenStream load_token_stream(const std::string& path, const std::string& format, int64_t vocab_size);

// Random windows of seq_len + 1 tokens: inputs are the first seq_len, targets the next
// token at each position. The window for (step, row) depends only on (seed, step, row),
// so a run resumed at step s sees the same batches as an uninterrupted one.
class WindowSampler {
 public:
  WindowSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed);
  // tokens, targets: [B, T] i32, filled in place.
  void batch(int64_t step, Tensor& tokens, Tensor& targets) const;

 private:
  const TokenStream& stream_;
  int64_t seq_len_;
  uint64_t seed_;
};

}  // namespace lethe
