// Language-model evaluation on a token dataset: mean next-token NLL, perplexity and top-1
// accuracy, over every sequence of the seed-study chunking (each next-token pair of each
// document counted once).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/data/token_dataset.h"
#include "engine/model/llama.h"

namespace lethe {

struct NllResult {
  int64_t sequences = 0;
  int64_t tokens = 0;       // predicted (unmasked) tokens
  double nll_sum = 0;       // nats
  int64_t correct = 0;      // argmax == target
  std::vector<double> sequence_nll;  // mean NLL of each evaluated sequence with targets (LOSS MIA score)
  double mean_nll() const { return tokens ? nll_sum / double(tokens) : 0; }
  double perplexity() const;
  double accuracy() const { return tokens ? double(correct) / double(tokens) : 0; }
};

// max_sequences <= 0 evaluates all of them.
NllResult evaluate_nll(LlamaModel& model, const TokenDataset& ds, int64_t seq_len, int64_t batch_size,
                       int64_t max_sequences = 0);

}  // namespace lethe
