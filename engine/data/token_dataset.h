// Token datasets (HDF5, docs/formats.md): concatenated token ids, document offsets and a
// SHA-256 per document. Loading validates every offset and id, so the sampler and the
// model never see an out-of-range index.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace lethe {

struct TokenDataset {
  std::string path;
  std::string tokenizer;  // "bytes", "hf:...", "gguf:..."
  std::string source;
  int64_t vocab_size = 0;
  int64_t bos_id = -1, eos_id = -1;
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets;  // n_docs + 1
  std::vector<std::array<uint8_t, 32>> doc_sha256;

  int64_t n_docs() const { return int64_t(offsets.size()) - 1; }
  int64_t n_tokens() const { return int64_t(tokens.size()); }
  int64_t doc_length(int64_t d) const { return offsets[size_t(d) + 1] - offsets[size_t(d)]; }
};

// model_vocab: the model's vocabulary; the dataset's ids must fit it (0 skips the check).
TokenDataset load_token_dataset(const std::string& path, int64_t model_vocab);

// Several datasets as one: documents in the order given. Tokenizers must agree.
TokenDataset concat_token_datasets(const std::vector<TokenDataset>& parts);

// Documents `docs` of ds (indices, in the order given) as a dataset of their own.
TokenDataset subset_token_dataset(const TokenDataset& ds, const std::vector<int64_t>& docs);

// Two halves of a dataset's documents, each a list of document indices in ascending order.
struct DocHalves {
  std::vector<int64_t> selection, report;
};

// Splits the documents by content: sorted by SHA-256 (the stored doc_sha256, or the hash of
// the document's token ids when the file has none; ties by index), the 2nd, 4th, ... go to
// `selection` and the 1st, 3rd, ... to `report`, so |selection| = floor(n/2) and
// |report| = ceil(n/2). Which half a document joins depends on the documents present,
// never on their order in the file, so every rank and every resume draws the same halves.
DocHalves split_documents_by_hash(const TokenDataset& ds);

// Writes a dataset (used by tests and by tools that build datasets in C++).
void save_token_dataset(const std::string& path, const TokenDataset& ds);

}  // namespace lethe
