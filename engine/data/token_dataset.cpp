#include "engine/data/token_dataset.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "engine/io/hdf5_file.h"
#include "engine/io/sha256.h"

namespace lethe {

TokenDataset load_token_dataset(const std::string& path, int64_t model_vocab) {
  const h5::File f = h5::File::open_read(path);
  TokenDataset ds;
  ds.path = path;
  LETHE_CHECK(f.has_attr("/", "format") && f.attr_string("/", "format") == "lethe-tokens", path,
              ": not a lethe token dataset (root attribute format != 'lethe-tokens')");
  const int64_t version = f.attr_int("/", "version");
  LETHE_CHECK(version == 1, path, ": token dataset version ", version, " is not supported (1)");
  ds.tokenizer = f.attr_string("/", "tokenizer");
  ds.source = f.has_attr("/", "source") ? f.attr_string("/", "source") : "";
  ds.vocab_size = f.attr_int("/", "vocab_size");
  ds.bos_id = f.has_attr("/", "bos_id") ? f.attr_int("/", "bos_id") : -1;
  ds.eos_id = f.has_attr("/", "eos_id") ? f.attr_int("/", "eos_id") : -1;
  LETHE_CHECK(ds.vocab_size > 0, path, ": vocab_size ", ds.vocab_size, " must be positive");
  LETHE_CHECK(model_vocab == 0 || ds.vocab_size <= model_vocab, path, ": dataset vocabulary (", ds.vocab_size,
              ") is larger than the model's (", model_vocab, ")");

  const Shape ts = f.shape("/tokens"), os = f.shape("/doc_offsets");
  LETHE_CHECK(ts.size() == 1, path, ": /tokens must be 1-D, has shape ", shape_str(ts));
  LETHE_CHECK(os.size() == 1 && os[0] >= 1, path, ": /doc_offsets must be 1-D with n_docs + 1 entries");
  // HDF5 would convert floats to ints silently, truncating 3.7 to 3.
  LETHE_CHECK(f.is_integer("/tokens"), path, ": /tokens must hold integers, not floating-point values");
  LETHE_CHECK(f.is_integer("/doc_offsets"), path, ": /doc_offsets must hold integers, not floating-point values");
  ds.tokens = f.read_i32("/tokens");
  ds.offsets = f.read_i64("/doc_offsets");
  const int64_t n = ds.n_tokens(), nd = ds.n_docs();
  LETHE_CHECK(ds.offsets.front() == 0, path, ": /doc_offsets[0] is ", ds.offsets.front(), ", expected 0");
  LETHE_CHECK(ds.offsets.back() == n, path, ": /doc_offsets ends at ", ds.offsets.back(), " but /tokens holds ", n,
              " tokens");
  for (int64_t d = 0; d < nd; ++d)
    LETHE_CHECK(ds.offsets[size_t(d)] <= ds.offsets[size_t(d) + 1], path, ": /doc_offsets decreases at document ",
                d);
  for (int64_t i = 0; i < n; ++i)
    LETHE_CHECK(ds.tokens[size_t(i)] >= 0 && ds.tokens[size_t(i)] < ds.vocab_size, path, ": token ",
                ds.tokens[size_t(i)], " at index ", i, " is outside the vocabulary [0, ", ds.vocab_size, ")");
  if (f.exists("/doc_sha256")) {
    const Shape hs = f.shape("/doc_sha256");
    LETHE_CHECK(hs.size() == 2 && hs[0] == nd && hs[1] == 32, path, ": /doc_sha256 has shape ", shape_str(hs),
                ", expected [", nd, ",32]");
    const auto raw = f.read_u8("/doc_sha256");
    ds.doc_sha256.resize(size_t(nd));
    for (int64_t d = 0; d < nd; ++d) std::memcpy(ds.doc_sha256[size_t(d)].data(), raw.data() + 32 * d, 32);
  }
  return ds;
}

TokenDataset concat_token_datasets(const std::vector<TokenDataset>& parts) {
  LETHE_CHECK(!parts.empty(), "concat_token_datasets: no datasets");
  TokenDataset out = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) {
    const TokenDataset& p = parts[i];
    LETHE_CHECK(p.tokenizer == out.tokenizer, p.path, ": tokenizer '", p.tokenizer, "' differs from ", parts[0].path,
                "'s '", out.tokenizer, "'");
    // Hashes are kept only while every part has them.
    const bool hashes = out.doc_sha256.size() == size_t(out.n_docs()) && p.doc_sha256.size() == size_t(p.n_docs());
    const int64_t base = out.n_tokens();
    out.tokens.insert(out.tokens.end(), p.tokens.begin(), p.tokens.end());
    for (size_t d = 1; d < p.offsets.size(); ++d) out.offsets.push_back(base + p.offsets[d]);
    if (hashes) out.doc_sha256.insert(out.doc_sha256.end(), p.doc_sha256.begin(), p.doc_sha256.end());
    else out.doc_sha256.clear();
    out.vocab_size = std::max(out.vocab_size, p.vocab_size);
    out.path += "+" + p.path;
    out.source += "+" + p.source;
  }
  return out;
}

TokenDataset subset_token_dataset(const TokenDataset& ds, const std::vector<int64_t>& docs) {
  TokenDataset out = ds;
  out.tokens.clear();
  out.offsets = {0};
  out.doc_sha256.clear();
  const bool hashes = ds.doc_sha256.size() == size_t(ds.n_docs());
  for (int64_t d : docs) {
    LETHE_CHECK(d >= 0 && d < ds.n_docs(), ds.path, ": document ", d, " out of range [0, ", ds.n_docs(), ")");
    const auto b = ds.tokens.begin() + ds.offsets[size_t(d)], e = ds.tokens.begin() + ds.offsets[size_t(d) + 1];
    out.tokens.insert(out.tokens.end(), b, e);
    out.offsets.push_back(out.n_tokens());
    if (hashes) out.doc_sha256.push_back(ds.doc_sha256[size_t(d)]);
  }
  return out;
}

DocHalves split_documents_by_hash(const TokenDataset& ds) {
  const int64_t n = ds.n_docs();
  const bool stored = ds.doc_sha256.size() == size_t(n);
  std::vector<std::pair<std::array<uint8_t, 32>, int64_t>> keyed;
  keyed.reserve(size_t(n));
  for (int64_t d = 0; d < n; ++d) {
    const int32_t* p = ds.tokens.data() + ds.offsets[size_t(d)];
    keyed.emplace_back(stored ? ds.doc_sha256[size_t(d)] : sha256(p, size_t(ds.doc_length(d)) * sizeof(int32_t)), d);
  }
  std::sort(keyed.begin(), keyed.end());
  DocHalves h;
  for (size_t i = 0; i < keyed.size(); ++i) (i % 2 ? h.selection : h.report).push_back(keyed[i].second);
  std::sort(h.selection.begin(), h.selection.end());
  std::sort(h.report.begin(), h.report.end());
  return h;
}

void save_token_dataset(const std::string& path, const TokenDataset& ds) {
  const std::string tmp = path + ".tmp";
  {
    h5::File f = h5::File::create(tmp);
    Tensor t = Tensor::empty({ds.n_tokens()}, DType::i32);
    // An empty vector may hold no buffer at all, and memcpy from null is undefined.
    if (!ds.tokens.empty()) std::memcpy(t.raw(), ds.tokens.data(), ds.tokens.size() * 4);
    f.write_tensor("/tokens", t);
    f.write_i64("/doc_offsets", ds.offsets);
    std::vector<uint8_t> h;
    for (const auto& d : ds.doc_sha256) h.insert(h.end(), d.begin(), d.end());
    if (!ds.doc_sha256.empty()) f.write_u8("/doc_sha256", h, {int64_t(ds.doc_sha256.size()), 32});
    f.set_attr("/", "format", std::string("lethe-tokens"));
    f.set_attr("/", "version", int64_t(1));
    f.set_attr("/", "tokenizer", ds.tokenizer);
    f.set_attr("/", "source", ds.source);
    f.set_attr("/", "vocab_size", ds.vocab_size);
    f.set_attr("/", "bos_id", ds.bos_id);
    f.set_attr("/", "eos_id", ds.eos_id);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace lethe
