// Token datasets (HDF5) and the sequence sampler: chunking, padding, masking, packing,
// deterministic order and cursor replay; malformed datasets rejected with the file named.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "engine/data/sequence_sampler.h"
#include "engine/data/token_dataset.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/sha256.h"
#include "kernels/cross_entropy.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

std::string tmp(const std::string& name) {
  return (fs::temp_directory_path() / ("lethe_data_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Three documents of lengths 5, 12 and 2: ids count up so every position is checkable.
TokenDataset small() {
  TokenDataset ds;
  ds.tokenizer = "bytes";
  ds.source = "unit test";
  ds.vocab_size = 100;
  for (int i = 0; i < 19; ++i) ds.tokens.push_back(i);
  ds.offsets = {0, 5, 17, 19};
  for (int d = 0; d < 3; ++d) ds.doc_sha256.push_back(sha256(&d, sizeof d));
  return ds;
}

TEST(TokenDataset, RoundTripsThroughHdf5) {
  const std::string p = tmp("rt.h5");
  save_token_dataset(p, small());
  const TokenDataset ds = load_token_dataset(p, 256);
  EXPECT_EQ(ds.tokens, small().tokens);
  EXPECT_EQ(ds.offsets, small().offsets);
  EXPECT_EQ(ds.doc_sha256, small().doc_sha256);
  EXPECT_EQ(ds.tokenizer, "bytes");
  EXPECT_EQ(ds.vocab_size, 100);
  EXPECT_EQ(ds.n_docs(), 3);
  EXPECT_THROW(load_token_dataset(p, 50), Error);  // dataset vocabulary larger than the model's
  fs::remove(p);
}

void expect_bad(const TokenDataset& ds, const std::string& needle) {
  const std::string p = tmp("bad.h5");
  save_token_dataset(p, ds);
  try {
    load_token_dataset(p, 0);
    FAIL() << "expected an error containing " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  fs::remove(p);
}

TEST(TokenDataset, MalformedIsRejected) {
  TokenDataset a = small();
  a.tokens[7] = 100;
  expect_bad(a, "token 100 at index 7");
  TokenDataset b = small();
  b.offsets = {0, 5, 4, 19};
  expect_bad(b, "decreases at document 1");
  TokenDataset c = small();
  c.offsets = {0, 5, 17, 18};
  expect_bad(c, "ends at 18");
  TokenDataset d = small();
  d.doc_sha256.pop_back();
  expect_bad(d, "/doc_sha256 has shape");

  const std::string p = tmp("trunc.h5");
  save_token_dataset(p, small());
  fs::resize_file(p, fs::file_size(p) / 2);
  EXPECT_THROW(load_token_dataset(p, 0), Error);
  fs::remove(p);
  EXPECT_THROW(load_token_dataset(tmp("absent.h5"), 0), Error);
  {
    h5::File f = h5::File::create(p);
    f.set_attr("/", "format", std::string("something-else"));
  }
  try {
    load_token_dataset(p, 0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a lethe token dataset"), std::string::npos) << e.what();
  }
  fs::remove(p);
}

TEST(SequenceSampler, ChunksPadsAndMasksPerDocument) {
  const TokenDataset ds = small();
  SamplerConfig cfg;
  cfg.seq_len = 4;
  cfg.shuffle = false;
  cfg.pad_id = 99;
  SequenceSampler s(ds, cfg);
  // doc0 (5 tokens): 4 pairs -> one full chunk. doc1 (12): 11 pairs -> 4 + 4 + 3.
  // doc2 (2): 1 pair -> one chunk with 1 target.
  ASSERT_EQ(s.n_sequences(), 5);
  int32_t tok[4], tgt[4];
  int64_t doc;
  s.sequence(0, tok, tgt, &doc);
  EXPECT_EQ(std::vector<int32_t>(tok, tok + 4), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(std::vector<int32_t>(tgt, tgt + 4), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(doc, 0);
  s.sequence(3, tok, tgt, &doc);  // last chunk of doc1: inputs 13,14,15 -> targets 14,15,16
  EXPECT_EQ(std::vector<int32_t>(tok, tok + 4), (std::vector<int32_t>{13, 14, 15, 99}));
  EXPECT_EQ(std::vector<int32_t>(tgt, tgt + 4), (std::vector<int32_t>{14, 15, 16, ops::kIgnoreIndex}));
  EXPECT_EQ(doc, 1);
  s.sequence(4, tok, tgt, &doc);
  EXPECT_EQ(tgt[0], 18);
  EXPECT_EQ(tgt[1], ops::kIgnoreIndex);
  EXPECT_EQ(doc, 2);
  // Every next-token pair of every document appears exactly once.
  std::multiset<std::pair<int32_t, int32_t>> pairs;
  for (int64_t i = 0; i < s.n_sequences(); ++i) {
    s.sequence(i, tok, tgt);
    for (int t = 0; t < 4; ++t)
      if (tgt[t] != ops::kIgnoreIndex) pairs.insert({tok[t], tgt[t]});
  }
  EXPECT_EQ(pairs.size(), 4u + 11u + 1u);
  EXPECT_EQ(pairs.count({4, 5}), 0u);  // no pair crosses a document boundary
}

TEST(SequenceSampler, MinTargetsDropsShortChunks) {
  SamplerConfig cfg;
  cfg.seq_len = 4;
  cfg.min_targets = 2;
  const TokenDataset ds = small();
  SequenceSampler s(ds, cfg);
  EXPECT_EQ(s.n_sequences(), 4);  // the 1-target chunk of doc2 is dropped
}

TEST(SequenceSampler, PackingCrossesDocuments) {
  SamplerConfig cfg;
  cfg.seq_len = 6;
  cfg.pack = true;
  cfg.shuffle = false;
  const TokenDataset ds = small();
  SequenceSampler s(ds, cfg);
  EXPECT_EQ(s.n_sequences(), 3);  // 18 pairs / 6
  int32_t tok[6], tgt[6];
  int64_t doc;
  s.sequence(1, tok, tgt, &doc);
  EXPECT_EQ(tok[0], 6);
  EXPECT_EQ(tgt[5], 12);
  EXPECT_EQ(doc, 1);
}

TEST(SequenceSampler, ShuffleIsSeededAndCursorReplays) {
  const TokenDataset ds = small();
  SamplerConfig cfg;
  cfg.seq_len = 4;
  cfg.seed = 5;
  SequenceSampler a(ds, cfg), b(ds, cfg);
  Tensor ta = Tensor::empty({3, 4}, DType::i32), ya = Tensor::empty({3, 4}, DType::i32);
  Tensor tb = Tensor::empty({3, 4}, DType::i32), yb = Tensor::empty({3, 4}, DType::i32);
  a.next(ta, ya);
  const SamplerCursor c = a.cursor();
  EXPECT_EQ(c, (SamplerCursor{0, 3}));
  a.next(ta, ya);  // crosses into epoch 1
  EXPECT_EQ(a.cursor(), (SamplerCursor{1, 1}));
  b.set_cursor(c);
  b.next(tb, yb);
  EXPECT_EQ(std::memcmp(ta.raw(), tb.raw(), ta.nbytes()), 0);
  EXPECT_EQ(std::memcmp(ya.raw(), yb.raw(), ya.nbytes()), 0);
  // An epoch visits every sequence once.
  SequenceSampler e(ds, cfg);
  std::vector<int64_t> docs, all;
  Tensor t1 = Tensor::empty({1, 4}, DType::i32), y1 = Tensor::empty({1, 4}, DType::i32);
  std::set<std::vector<int32_t>> seen;
  for (int i = 0; i < 5; ++i) {
    e.next(t1, y1);
    seen.insert(std::vector<int32_t>(t1.data<int32_t>(), t1.data<int32_t>() + 4));
  }
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_THROW(e.set_cursor({0, 6}), Error);
}

}  // namespace
}  // namespace lethe
