// Turns a token dataset into training sequences of seq_len, as the seed study did:
// each document is cut into consecutive chunks (chunk k predicts tokens k*T+1 ..
// (k+1)*T of the document), the last chunk is padded and its padding masked, and chunks
// with fewer than `min_targets` real targets are dropped. With `pack`, documents are
// concatenated and cut without regard to boundaries (attention then crosses documents,
// as in Megatron's default packing). The order is a seeded shuffle per epoch; the cursor
// (epoch, index) is all a checkpoint needs to replay the same batches.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/data/token_dataset.h"

namespace lethe {

struct SamplerConfig {
  int64_t seq_len = 512;
  int64_t min_targets = 1;  // drop chunks with fewer real next-token targets
  bool pack = false;
  bool shuffle = true;
  uint64_t seed = 0;
  int32_t pad_id = 0;       // input id at padded positions (their targets are masked)
};

struct SamplerCursor {
  int64_t epoch = 0;
  int64_t index = 0;  // next position in this epoch's order
  bool operator==(const SamplerCursor&) const = default;
};

class SequenceSampler {
 public:
  SequenceSampler(const TokenDataset& ds, const SamplerConfig& cfg);
  // The sampler keeps a reference to ds: a temporary would dangle after the constructor.
  SequenceSampler(TokenDataset&& ds, const SamplerConfig& cfg) = delete;

  int64_t n_sequences() const { return int64_t(chunks_.size()); }
  int64_t seq_len() const { return cfg_.seq_len; }
  // Fills tokens/targets [B, T] with the next B sequences (wrapping into the next epoch)
  // and, when given, the document index and the sequence index of each row.
  void next(Tensor& tokens, Tensor& targets, std::vector<int64_t>* docs = nullptr,
            std::vector<int64_t>* seq_ids = nullptr);
  // Sequence i in dataset order (no shuffle): evaluation walks these.
  void sequence(int64_t i, int32_t* tokens, int32_t* targets, int64_t* doc = nullptr) const;

  SamplerCursor cursor() const { return cursor_; }
  void set_cursor(const SamplerCursor& c);

 private:
  struct Chunk {
    int64_t begin;   // first input token, index into ds.tokens
    int64_t length;  // real inputs (= real targets), <= seq_len
    int64_t doc;
  };
  int64_t order(int64_t epoch, int64_t i) const;

  const TokenDataset& ds_;
  SamplerConfig cfg_;
  std::vector<Chunk> chunks_;
  SamplerCursor cursor_;
  mutable int64_t perm_epoch_ = -1;
  mutable std::vector<int64_t> perm_;
};

}  // namespace lethe
