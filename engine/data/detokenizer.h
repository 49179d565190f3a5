// Token ids back to text, from a tokenizer's vocabulary (as GGUF files carry it), for
// printing generations. Byte-level BPE ("gpt2": GPT-2, Llama-3, SmolLM2) maps each
// character of a token back to one byte; SentencePiece ("llama": Llama-2, Mistral)
// turns U+2581 into a space and <0xNN> tokens into raw bytes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lethe {

class Detokenizer {
 public:
  // model: "gpt2" or "llama"; tokens: the vocabulary strings in id order.
  Detokenizer(std::string model, std::vector<std::string> tokens);
  // Bytes of the decoded text (UTF-8 when the ids form whole characters). An id outside
  // the vocabulary is an error naming it.
  std::string decode(const std::vector<int32_t>& ids) const;
  size_t vocab_size() const { return tokens_.size(); }

 private:
  std::string model_;
  std::vector<std::string> tokens_;
  std::vector<int> byte_of_char_;  // byte-level BPE: code point -> byte, -1 if none
};

}  // namespace lethe
