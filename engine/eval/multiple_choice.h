// Multiple-choice accuracy by log-likelihood, scored the way lm-evaluation-harness scores
// ARC and MMLU: no generation, each choice's probability as a continuation of the question
// is compared. It measures how much general knowledge survives unlearning.
//
// Task file (JSONL, one item per line; blank lines are skipped; other keys are ignored):
//   {"question": "...", "choices": ["...", "..."], "answer": 0}
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/model/llama.h"

namespace lethe {

using TextEncoder = std::function<std::vector<int32_t>(const std::string&)>;

// The byte-level tokenizer ("bytes" datasets): token id = UTF-8 byte.
std::vector<int32_t> bytes_encode(const std::string& text);

struct McItem {
  std::string question;
  std::vector<std::string> choices;
  int64_t answer = 0;
  int64_t line = 0;  // 1-based line of the task file, for messages
};

// Reads and validates a task file. A line that is not JSON, lacks a field, has a field of
// the wrong type, an empty choice list, an empty choice, or an answer outside the choices
// is a lethe::Error naming the file and the line; so is a file with no items.
std::vector<McItem> load_mc_task(const std::string& jsonl_path);

// Summed log p(continuation | context) in nats for each choice, with
// context = question + "\nAnswer:" and continuation = " " + choice. As in the harness, the
// continuation's tokens are those of encode(context + continuation) past
// encode(context).size(), so BPE merges across the boundary match how the text is read.
// A context longer than the model's max_seq_len is cut from the left (the question's end
// and the continuation are kept); a continuation longer than max_seq_len is an error.
// `tokens`, when given, receives each continuation's token count.
std::vector<double> choice_logprobs(LlamaModel& model, const McItem& item, const TextEncoder& encode,
                                   std::vector<int64_t>* tokens = nullptr);

struct McResult {
  int64_t items = 0;
  double acc = 0;       // argmax of the summed log-likelihood == answer
  double acc_norm = 0;  // argmax of the log-likelihood divided by the choice's length
  // TOFU's truth ratio of each item with two or more choices, in file order
  // (engine/eval/truth_ratio.h); items with one choice have none.
  std::vector<double> truth_ratios;
};

// acc_norm divides by the length of the choice text without its leading space, counted in
// characters (Unicode code points; bytes for ASCII), as the harness's len(choice) does.
// Ties go to the lowest index, as numpy's argmax.
McResult multiple_choice_accuracy(LlamaModel& model, const std::string& jsonl_path, const TextEncoder& encode);

}  // namespace lethe
