// Finding a model's vocabulary for decoding: a lethe checkpoint's tokenizer.json (what
// `convert gguf-to-lethe` stores, format "lethe-tokenizer"), a transformers directory's
// tokenizer.json (byte-level BPE or SentencePiece-style BPE with byte fallback), or a path
// to either file.
#pragma once
#include <memory>
#include <string>

#include "engine/data/detokenizer.h"

namespace lethe {

// nullptr when `path` holds no tokenizer file; an error when it holds one that cannot be
// read or is of a kind Detokenizer does not decode.
std::unique_ptr<Detokenizer> find_detokenizer(const std::string& path);

}  // namespace lethe
