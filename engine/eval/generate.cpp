#include "engine/eval/generate.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/eval/rouge.h"
#include "kernels/cross_entropy.h"
#include "kernels/numerics.h"

namespace lethe {
namespace {

void check_ids(const std::vector<int32_t>& ids, int64_t V, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i)
    LETHE_CHECK(ids[i] >= 0 && ids[i] < V, what, ": token id ", ids[i], " at position ", i,
                " is outside the model's vocabulary [0, ", V, ")");
}

}  // namespace

std::vector<std::vector<int32_t>> greedy_continue_batch(LlamaModel& model,
                                                        const std::vector<std::vector<int32_t>>& prefixes,
                                                        int64_t max_new_tokens, int32_t stop_id) {
  LETHE_CHECK(max_new_tokens >= 0, "greedy decoding: max_new_tokens must be >= 0, got ", max_new_tokens);
  const int64_t B = int64_t(prefixes.size());
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  if (B == 0 || max_new_tokens == 0) return out;
  const int64_t V = model.config().vocab_size, max_T = model.config().max_seq_len;
  const size_t len0 = prefixes[0].size();
  LETHE_CHECK(len0 > 0, "greedy decoding: empty prefix");
  for (const auto& p : prefixes) {
    LETHE_CHECK(p.size() == len0, "greedy decoding: batched prefixes must have equal lengths, got ", len0, " and ",
                p.size());
    check_ids(p, V, "greedy decoding");
  }

  std::vector<std::vector<int32_t>> ctx = prefixes;
  std::vector<bool> done(static_cast<size_t>(B), false);
  int64_t n_done = 0;
  // Each step's logits of the last position, [B, V/tp]. While the context fits the model
  // (max_seq_len positions) the key/value cache serves each new token; past it the window
  // slides, every position shifts, and the window is run afresh (a prefill) per token.
  // Logits only: no loss, so no collective over dp (each dp rank decodes its own rows).
  Tensor logits = Tensor::empty({B, model.vocab_shard().size}, model.storage_dtype(), model.device());
  Tensor next_ids = Tensor::empty({B}, DType::i32), last = Tensor::empty({B}, DType::i32);
  bool cached = false;
  for (int64_t step = 0; step < max_new_tokens && n_done < B; ++step) {
    const int64_t len = int64_t(ctx[0].size()), T = std::min(len, max_T);
    if (cached && len <= max_T) {
      for (int64_t b = 0; b < B; ++b) last.data<int32_t>()[b] = ctx[size_t(b)].back();
      model.decode_step(last, logits);
    } else {
      Tensor tok = Tensor::empty({B, T}, DType::i32);
      for (int64_t b = 0; b < B; ++b)
        std::copy(ctx[size_t(b)].end() - T, ctx[size_t(b)].end(), tok.data<int32_t>() + b * T);
      model.decode_prefill(tok, logits);
      cached = true;
    }
    // The next ids from the logits where they live: each rank's first maximum of its
    // vocabulary slice, the smallest id among the ranks holding the row's maximum; only
    // [B] values reach the host. A non-finite logit stops every tp rank alike.
    const ops::NonFiniteScan bad = ops::find_nonfinite(logits);
    if (model.grid().tp_group().all_reduce(bad.count, ReduceOp::sum) > 0) {
      const int64_t Vr = logits.dim(1);
      LETHE_CHECK(bad.count == 0, "greedy decoding: the logit of token ", model.vocab_shard().start + bad.first % Vr,
                  " in row ", bad.first / Vr, " is not finite (", bad.count, " non-finite logits in this step)");
      LETHE_FAIL("greedy decoding: another tensor-parallel rank's logits are not finite");
    }
    vocab_parallel_argmax(logits, model.vocab_shard(), next_ids, model.grid().tp_group());
    for (int64_t b = 0; b < B; ++b) {
      const int32_t next = next_ids.data<int32_t>()[b];
      // Finished rows keep growing so every row stays the same length; their tokens are
      // discarded.
      ctx[size_t(b)].push_back(next);
      if (done[size_t(b)]) continue;
      out[size_t(b)].push_back(next);
      if (stop_id >= 0 && next == stop_id) {
        done[size_t(b)] = true;
        ++n_done;
      }
    }
  }
  return out;
}

std::vector<int32_t> greedy_continue(LlamaModel& model, const std::vector<int32_t>& prefix, int64_t max_new_tokens,
                                     int32_t stop_id) {
  LETHE_CHECK(!prefix.empty(), "greedy decoding: empty prefix");
  return greedy_continue_batch(model, {prefix}, max_new_tokens, stop_id)[0];
}

std::string bytes_decode(const std::vector<int32_t>& ids) {
  std::string s(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    LETHE_CHECK(ids[i] >= 0 && ids[i] < 256, "bytes_decode: id ", ids[i], " at position ", i,
                " is not a byte");
    s[i] = char(uint8_t(ids[i]));
  }
  return s;
}

VerbatimResult verbatim_memorisation(LlamaModel& model, const TokenDataset& ds, int64_t prefix_len,
                                     int64_t continuation_len, int64_t max_docs,
                                     const std::function<std::string(const std::vector<int32_t>&)>& decode,
                                     int64_t batch_size) {
  LETHE_CHECK(prefix_len >= 1, "verbatim memorisation: prefix_len must be >= 1, got ", prefix_len);
  LETHE_CHECK(continuation_len >= 1, "verbatim memorisation: continuation_len must be >= 1, got ",
              continuation_len);
  LETHE_CHECK(batch_size >= 1, "verbatim memorisation: batch size must be >= 1, got ", batch_size);
  LETHE_CHECK(bool(decode), "verbatim memorisation: no decode function");
  const int64_t need = prefix_len + continuation_len;

  VerbatimResult r;
  std::vector<int64_t> docs;
  for (int64_t d = 0; d < ds.n_docs(); ++d) {
    if (ds.doc_length(d) < need) {
      ++r.skipped;
      continue;
    }
    if (max_docs <= 0 || int64_t(docs.size()) < max_docs) docs.push_back(d);
  }

  // Under data parallelism dp rank d decodes batches d, d + dp, ... (generation has no dp
  // collective; the tp ranks of one dp rank decode the same batches together). Each
  // document's scores go to its own slot and an exact sum over dp collects them, so the
  // means are summed in one process's order.
  const int dp = model.grid().dp(), dp_rank = model.grid().dp_rank();
  Tensor scores = Tensor::zeros({std::max<int64_t>(int64_t(docs.size()), 1), 3}, DType::f64);
  double* sc = scores.data<double>();
  for (size_t i0 = 0, bi = 0; i0 < docs.size(); i0 += size_t(batch_size), ++bi) {
    if (int(bi % size_t(dp)) != dp_rank) continue;
    const size_t n = std::min(docs.size() - i0, size_t(batch_size));
    std::vector<std::vector<int32_t>> prefixes(n);
    for (size_t j = 0; j < n; ++j) {
      const auto start = ds.tokens.begin() + ds.offsets[size_t(docs[i0 + j])];
      prefixes[j].assign(start, start + prefix_len);
    }
    const auto generated = greedy_continue_batch(model, prefixes, continuation_len);
    for (size_t j = 0; j < n; ++j) {
      const auto start = ds.tokens.begin() + ds.offsets[size_t(docs[i0 + j])] + prefix_len;
      const std::vector<int32_t> truth(start, start + continuation_len);
      const RougeL s = rouge_l(rouge_tokenize(decode(generated[j])), rouge_tokenize(decode(truth)));
      double* slot = sc + (i0 + j) * 3;
      slot[0] = s.f1;
      slot[1] = s.recall;
      slot[2] = generated[j] == truth ? 1.0 : 0.0;
    }
  }
  if (dp > 1) model.grid().dp_group().all_reduce(scores, ReduceOp::sum);
  double f1_sum = 0, recall_sum = 0;
  int64_t exact = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    f1_sum += sc[i * 3];
    recall_sum += sc[i * 3 + 1];
    exact += sc[i * 3 + 2] != 0.0;
  }
  r.docs = int64_t(docs.size());
  if (r.docs > 0) {
    r.rouge_l_f1_mean = f1_sum / double(r.docs);
    r.rouge_l_recall_mean = recall_sum / double(r.docs);
    r.exact_match_rate = double(exact) / double(r.docs);
  }
  return r;
}

}  // namespace lethe
