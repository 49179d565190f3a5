// Greedy decoding and the verbatim-memorisation evaluation built on it: does the model,
// given the start of a document, reproduce the document's next tokens?
//
// Decoding keeps a key/value cache (LlamaModel::decode_prefill / decode_step): each new
// token runs one position through the model, on the same ops as the full forward, instead
// of a forward over the whole context. Past max_seq_len the window slides and is run
// afresh per token.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/data/token_dataset.h"
#include "engine/model/llama.h"

namespace lethe {

// Appends up to max_new_tokens argmax tokens to prefix and returns only the new ones.
// - Ties in the argmax go to the lowest token id, so the output is a pure function of the
//   logits.
// - Once the context is longer than model.config().max_seq_len, only its last
//   max_seq_len tokens are fed to the model (left truncation, as a sliding window): the
//   model has no positions beyond that.
// - When stop_id >= 0 and is generated, it is included in the output (as transformers'
//   generate keeps the EOS token) and generation ends.
// prefix must be non-empty and every id must be inside the model's vocabulary. Logits that
// are NaN are an error rather than a silent token 0.
std::vector<int32_t> greedy_continue(LlamaModel& model, const std::vector<int32_t>& prefix, int64_t max_new_tokens,
                                     int32_t stop_id = -1);

// The same for several prefixes of equal length, run as one batch per step. Each
// continuation stops on its own at stop_id; the result for each prefix is what
// greedy_continue would return for it alone (up to float rounding of batched matrix
// products, which can only matter at exact near-ties).
std::vector<std::vector<int32_t>> greedy_continue_batch(LlamaModel& model,
                                                        const std::vector<std::vector<int32_t>>& prefixes,
                                                        int64_t max_new_tokens, int32_t stop_id = -1);

// Token ids of a byte-level dataset ("bytes" tokenizer) back to its bytes. An id outside
// [0, 256) is an error.
std::string bytes_decode(const std::vector<int32_t>& ids);

struct VerbatimResult {
  int64_t docs = 0;              // documents evaluated
  int64_t skipped = 0;           // documents of the dataset shorter than prefix_len + continuation_len
  double rouge_l_f1_mean = 0;    // mean over evaluated documents; 0 when docs == 0
  double rouge_l_recall_mean = 0;
  double exact_match_rate = 0;   // generated token ids == true token ids
};

// For each document with at least prefix_len + continuation_len tokens, in dataset order
// and up to max_docs of them (max_docs <= 0: all): greedy-continue its first prefix_len
// tokens by continuation_len tokens and compare with its next continuation_len tokens.
// Exact match compares token ids. ROUGE-L compares rouge_tokenize(decode(...)) of the two,
// so it measures the words reproduced independently of the tokenizer. decode is the
// dataset's detokenizer (bytes_decode for ds.tokenizer == "bytes"). Nothing of the
// documents is printed or logged. batch_size documents are decoded together per step.
VerbatimResult verbatim_memorisation(LlamaModel& model, const TokenDataset& ds, int64_t prefix_len,
                                     int64_t continuation_len, int64_t max_docs,
                                     const std::function<std::string(const std::vector<int32_t>&)>& decode,
                                     int64_t batch_size = 1);

}  // namespace lethe
