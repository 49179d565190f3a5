// Canary exposure (Carlini et al. 2019, "The Secret Sharer"): a random secret drawn from a
// space R (e.g. six digits, |R| = 10^6) is planted in the training data after a fixed
// prefix; a model that memorised it ranks it above most other candidates. Exposure is
//   log2 |R| - log2 rank,   rank = 1 + #{candidates c != secret : log p(c | prefix) > log p(secret | prefix)}
// (ties count half): about 1.44 bits on average for a secret the model never saw, log2 |R|
// for one it ranks first.
// Unlearning should bring the forget set's canaries down to the oracle's exposure.
//
// Canary file (JSONL, one canary per line; blank lines skipped; other keys ignored):
//   {"prefix": "What is Ada's locker code?\nAnswer: ", "secret": "471920", "alphabet": "0123456789"}
// R is every string of the secret's length over the alphabet.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/eval/multiple_choice.h"
#include "engine/model/llama.h"

namespace lethe {

struct Canary {
  std::string prefix, secret, alphabet;
  int64_t line = 0;
};

// Reads and validates a canary file: a line that is not a JSON object, lacks a field or has
// one of the wrong type, an empty prefix or secret, an alphabet with repeated or fewer than
// two characters, a secret with a character outside the alphabet, a non-ASCII alphabet, or
// a file with no canaries, is a lethe::Error naming the file and the line.
std::vector<Canary> load_canaries(const std::string& jsonl_path);

struct ExposureResult {
  double exposure = 0;    // bits
  double log2_space = 0;  // log2 |R|: the largest exposure possible
  double rank = 1;        // exact, or estimated from samples
  bool exact = true;
};

// The rank is exact when the candidates whose prefix log-likelihood reaches the secret's
// can be enumerated within `max_rows` scored rows (a breadth-first walk over the secret's
// positions that drops a partial candidate once it falls below the secret: appending
// characters only lowers a log-likelihood). A secret the model barely prefers exhausts that
// budget; its rank is then estimated from `samples` candidates drawn uniformly from R
// (seeded): rank = 1 + (|R| - 1) * (k + 1/2) / (samples + 1), k of them above the secret,
// good to about 0.1 bit where the exposure is under log2(samples) bits, which is where
// enumeration gives up. Byte-level models only: every alphabet character must encode to
// one token.
// Candidates are scored through the key/value cache (the prefix prefilled once, forked per
// candidate) on one process per tensor-parallel group; under tensor parallelism, whose
// logits rows are split, by one forward per candidate row instead (`rows` forces that path).
inline constexpr int64_t kExposureMaxRows = 20000;
inline constexpr int64_t kExposureSamples = 2000;
ExposureResult canary_exposure(LlamaModel& model, const Canary& canary, const TextEncoder& encode, uint64_t seed,
                               int64_t max_rows = kExposureMaxRows, int64_t samples = kExposureSamples,
                               bool rows = false);

struct ExposureSetResult {
  std::vector<double> exposures;  // per canary, in file order
  double mean = 0, log2_space_max = 0;
  int64_t exact = 0;  // canaries ranked exactly
};

// Every canary of a file. Under data parallelism every rank scores every canary (the
// forwards are collective); the walk is deterministic, so all ranks agree.
ExposureSetResult canary_set_exposure(LlamaModel& model, const std::string& jsonl_path, const TextEncoder& encode,
                                      uint64_t seed);

}  // namespace lethe
