#include "engine/data/detokenizer.h"

#include "engine/core/error.h"

namespace lethe {
namespace {
// Next code point of UTF-8 string s at i (advances i); invalid bytes come back as-is.
uint32_t next_cp(const std::string& s, size_t& i) {
  const unsigned char c = s[i];
  int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
  if (n <= 0 || i + size_t(n) >= s.size() + 0) {
    ++i;
    return c;
  }
  uint32_t cp = c & (0x3f >> n);
  for (int k = 1; k <= n; ++k) cp = (cp << 6) | (uint32_t(s[i + size_t(k)]) & 0x3f);
  i += size_t(n) + 1;
  return cp;
}
}  // namespace

Detokenizer::Detokenizer(std::string model, std::vector<std::string> tokens)
    : model_(std::move(model)), tokens_(std::move(tokens)) {
  LETHE_CHECK(model_ == "gpt2" || model_ == "llama", "detokenizer: tokenizer model '", model_,
              "' is not supported (gpt2 byte-level BPE, llama SentencePiece)");
  if (model_ == "gpt2") {
    // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 bytes
    // are shifted to code points 256.. in byte order.
    byte_of_char_.assign(512, -1);
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_of_char_[size_t(printable ? b : 256 + shifted++)] = b;
    }
  }
}

std::string Detokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    LETHE_CHECK(id >= 0 && size_t(id) < tokens_.size(), "detokenizer: id ", id, " is outside the vocabulary of ",
                tokens_.size());
    const std::string& t = tokens_[size_t(id)];
    if (model_ == "gpt2") {
      for (size_t i = 0; i < t.size();) {
        const uint32_t cp = next_cp(t, i);
        if (cp < byte_of_char_.size() && byte_of_char_[cp] >= 0) out += char(byte_of_char_[cp]);
        else out += '?';  // not a byte-level character: a malformed vocabulary entry
      }
    } else if (t.size() == 6 && t[0] == '<' && t[1] == '0' && t[2] == 'x' && t[5] == '>') {
      out += char(std::stoi(t.substr(3, 2), nullptr, 16));  // SentencePiece byte fallback
    } else {
      for (size_t i = 0; i < t.size(); ++i) {
        if (i + 2 < t.size() && uint8_t(t[i]) == 0xE2 && uint8_t(t[i + 1]) == 0x96 && uint8_t(t[i + 2]) == 0x81) {
          out += ' ';  // U+2581, SentencePiece's word boundary
          i += 2;
        } else {
          out += t[i];
        }
      }
    }
  }
  return out;
}

}  // namespace lethe
