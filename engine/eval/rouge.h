// ROUGE-L (Lin 2004): longest-common-subsequence overlap between a candidate and a
// reference token sequence, computed as Google's rouge-score package does (rougeL, no
// stemming), so that numbers are comparable with unlearning papers that report it
// (TOFU, MUSE).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lethe {

struct RougeL {
  double precision = 0;  // LCS / |candidate|
  double recall = 0;     // LCS / |reference|
  double f1 = 0;         // 2PR / (P + R), the beta = 1 F-measure; 0 when P + R == 0
};

// All three are 0 when either sequence is empty (rouge-score's convention, which also
// scores empty against empty as 0).
RougeL rouge_l(const std::vector<std::string>& candidate, const std::vector<std::string>& reference);
RougeL rouge_l_ids(const std::vector<int32_t>& candidate, const std::vector<int32_t>& reference);

// rouge-score's default tokenizer: lowercase, every run of characters other than [a-z0-9]
// is a separator, no stemming. Input is UTF-8; non-ASCII characters separate words, as
// they do after Python's str.lower() in rouge-score, including the two whose lowercase is
// ASCII (U+0130 -> "i" + U+0307, U+212A KELVIN SIGN -> "k").
std::vector<std::string> rouge_tokenize(const std::string& text);

}  // namespace lethe
