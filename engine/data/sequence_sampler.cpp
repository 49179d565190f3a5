#include "engine/data/sequence_sampler.h"

#include <algorithm>
#include <numeric>

#include "engine/core/rng.h"
#include "kernels/cross_entropy.h"

namespace lethe {

SequenceSampler::SequenceSampler(const TokenDataset& ds, const SamplerConfig& cfg) : ds_(ds), cfg_(cfg) {
  LETHE_CHECK(cfg.seq_len > 0, "seq_len must be positive, got ", cfg.seq_len);
  LETHE_CHECK(cfg.min_targets >= 1 && cfg.min_targets <= cfg.seq_len, "min_targets must be in [1, seq_len], got ",
              cfg.min_targets);
  LETHE_CHECK(cfg.pad_id >= 0 && cfg.pad_id < ds.vocab_size, "pad_id ", cfg.pad_id, " is outside the vocabulary");
  const int64_t T = cfg.seq_len;
  // A span [a, b) of tokens has b - a - 1 next-token pairs; chunk k takes pairs kT..kT+T-1.
  auto cut = [&](int64_t a, int64_t b, int64_t doc) {
    for (int64_t s = a; s + 1 < b; s += T) {
      const int64_t len = std::min(T, b - 1 - s);
      if (len >= cfg.min_targets) chunks_.push_back({s, len, doc});
    }
  };
  if (cfg.pack) {
    // Document of each packed chunk = the document holding its first token.
    for (int64_t s = 0; s + 1 < ds.n_tokens(); s += T) {
      const int64_t len = std::min(T, ds.n_tokens() - 1 - s);
      const int64_t doc = int64_t(std::upper_bound(ds.offsets.begin(), ds.offsets.end(), s) - ds.offsets.begin()) - 1;
      if (len >= cfg.min_targets) chunks_.push_back({s, len, doc});
    }
  } else {
    for (int64_t d = 0; d < ds.n_docs(); ++d) cut(ds.offsets[size_t(d)], ds.offsets[size_t(d) + 1], d);
  }
  LETHE_CHECK(!chunks_.empty(), ds.path, ": no sequence of at least ", cfg.min_targets,
              " targets (documents too short for min_targets?)");
}

int64_t SequenceSampler::order(int64_t epoch, int64_t i) const {
  if (!cfg_.shuffle) return i;
  if (perm_epoch_ != epoch) {
    // Fisher-Yates driven by Philox(seed, epoch): the same permutation on every run.
    const int64_t n = n_sequences();
    perm_.resize(size_t(n));
    std::iota(perm_.begin(), perm_.end(), 0);
    const Philox rng(cfg_.seed, uint64_t(epoch) + 0x5eed0000ull);
    for (int64_t k = n - 1; k > 0; --k) std::swap(perm_[size_t(k)], perm_[rng.below(uint64_t(k), uint64_t(k + 1))]);
    perm_epoch_ = epoch;
  }
  return perm_[size_t(i)];
}

void SequenceSampler::sequence(int64_t i, int32_t* tokens, int32_t* targets, int64_t* doc) const {
  LETHE_CHECK(i >= 0 && i < n_sequences(), "sequence ", i, " out of range [0, ", n_sequences(), ")");
  const Chunk& c = chunks_[size_t(i)];
  const int32_t* src = ds_.tokens.data() + c.begin;
  for (int64_t t = 0; t < cfg_.seq_len; ++t) {
    const bool real = t < c.length;
    tokens[t] = real ? src[t] : cfg_.pad_id;
    targets[t] = real ? src[t + 1] : ops::kIgnoreIndex;
  }
  if (doc) *doc = c.doc;
}

void SequenceSampler::next(Tensor& tokens, Tensor& targets, std::vector<int64_t>* docs,
                           std::vector<int64_t>* seq_ids) {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  LETHE_CHECK(T == cfg_.seq_len, "SequenceSampler: batch has T=", T, ", sampler was built for ", cfg_.seq_len);
  check_shape(targets, {B, T}, "SequenceSampler::next", "targets");
  if (docs) docs->assign(size_t(B), -1);
  if (seq_ids) seq_ids->assign(size_t(B), -1);
  for (int64_t b = 0; b < B; ++b) {
    if (cursor_.index >= n_sequences()) cursor_ = {cursor_.epoch + 1, 0};
    const int64_t i = order(cursor_.epoch, cursor_.index);
    sequence(i, tokens.data<int32_t>() + b * T, targets.data<int32_t>() + b * T, docs ? &(*docs)[size_t(b)] : nullptr);
    if (seq_ids) (*seq_ids)[size_t(b)] = i;
    ++cursor_.index;
  }
}

void SequenceSampler::set_cursor(const SamplerCursor& c) {
  LETHE_CHECK(c.epoch >= 0 && c.index >= 0 && c.index <= n_sequences(), "sampler cursor (epoch ", c.epoch,
              ", index ", c.index, ") does not fit this dataset's ", n_sequences(), " sequences");
  cursor_ = c;
}

}  // namespace lethe
