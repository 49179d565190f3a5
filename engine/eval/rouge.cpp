#include "engine/eval/rouge.h"

#include <algorithm>

namespace lethe {
namespace {

// Two rows of the LCS table: memory O(|b|) so long continuations cost no more than time.
template <typename T>
int64_t lcs_length(const std::vector<T>& a, const std::vector<T>& b) {
  std::vector<int64_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

template <typename T>
RougeL score(const std::vector<T>& candidate, const std::vector<T>& reference) {
  RougeL r;
  if (candidate.empty() || reference.empty()) return r;
  const double lcs = double(lcs_length(candidate, reference));
  r.precision = lcs / double(candidate.size());
  r.recall = lcs / double(reference.size());
  if (r.precision + r.recall > 0) r.f1 = 2 * r.precision * r.recall / (r.precision + r.recall);
  return r;
}

}  // namespace

RougeL rouge_l(const std::vector<std::string>& candidate, const std::vector<std::string>& reference) {
  return score(candidate, reference);
}

RougeL rouge_l_ids(const std::vector<int32_t>& candidate, const std::vector<int32_t>& reference) {
  return score(candidate, reference);
}

std::vector<std::string> rouge_tokenize(const std::string& text) {
  std::vector<std::string> tokens;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) tokens.push_back(std::move(cur));
    cur.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      cur += char(c);
    } else if (c >= 'A' && c <= 'Z') {
      cur += char(c - 'A' + 'a');
    } else if (c == 0xC4 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0xB0) {
      // U+0130 lowercases to "i" followed by a combining dot, which ends the word.
      cur += 'i';
      flush();
      ++i;
    } else if (c == 0xE2 && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0x84 &&
               static_cast<unsigned char>(text[i + 2]) == 0xAA) {
      cur += 'k';  // U+212A KELVIN SIGN lowercases to ASCII "k" and joins the word
      i += 2;
    } else {
      flush();
    }
  }
  flush();
  return tokens;
}

}  // namespace lethe
