// Token datasets built inside the unlearning tests: byte-level documents from strings,
// and random-letter "secret" text that a model can only predict by memorising it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/rng.h"
#include "engine/data/token_dataset.h"
#include "engine/io/sha256.h"

namespace lethe::test {

// One document per text, byte tokens, each with its SHA-256 (reports name documents by it).
inline TokenDataset docs(const std::vector<std::string>& texts) {
  TokenDataset ds;
  ds.tokenizer = "bytes";
  ds.vocab_size = 256;
  ds.offsets = {0};
  for (const auto& t : texts) {
    for (unsigned char c : t) ds.tokens.push_back(c);
    ds.offsets.push_back(int64_t(ds.tokens.size()));
    ds.doc_sha256.push_back(sha256(t.data(), t.size()));
  }
  return ds;
}

// n lowercase letters drawn from stream `stream` of a fixed Philox key: the same text on
// every run and machine, different per stream.
inline std::string letters(uint64_t stream, int n) {
  const Philox rng(42, stream);
  std::string s;
  for (int i = 0; i < n; ++i) s += char('a' + rng.below(uint64_t(i), 26));
  return s;
}

}  // namespace lethe::test
