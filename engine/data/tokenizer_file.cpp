#include "engine/data/tokenizer_file.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "engine/io/checkpoint.h"

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::unique_ptr<Detokenizer> from_json(const json& j, const std::string& where) {
  if (j.value("format", "") == "lethe-tokenizer") {
    LETHE_CHECK(j.contains("model") && j.contains("tokens"), where, ": lethe-tokenizer without model or tokens");
    return std::make_unique<Detokenizer>(j["model"].get<std::string>(), j["tokens"].get<std::vector<std::string>>());
  }
  // transformers' tokenizer.json: a BPE vocabulary (string -> id) plus added tokens; the
  // decoder says whether tokens are byte-level (GPT-2 alphabet) or SentencePiece pieces.
  LETHE_CHECK(j.contains("model") && j["model"].is_object() && j["model"].value("type", "") == "BPE" &&
                  j["model"].contains("vocab") && j["model"]["vocab"].is_object(),
              where, ": not a BPE tokenizer.json; decoding it is not supported");
  std::vector<std::string> tokens;
  auto put = [&](const std::string& t, int64_t id) {
    LETHE_CHECK(id >= 0 && id < (int64_t(1) << 24), where, ": token id ", id, " out of range");
    if (size_t(id) >= tokens.size()) tokens.resize(size_t(id) + 1);
    tokens[size_t(id)] = t;
  };
  for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it) put(it.key(), it.value().get<int64_t>());
  if (j.contains("added_tokens"))
    for (const auto& a : j["added_tokens"]) put(a.at("content").get<std::string>(), a.at("id").get<int64_t>());
  const std::string dec = j.contains("decoder") && j["decoder"].is_object() ? j["decoder"].dump() : "";
  std::string model;
  if (dec.find("\"ByteLevel\"") != std::string::npos) model = "gpt2";
  else if (dec.find("ByteFallback") != std::string::npos || dec.find("\\u2581") != std::string::npos ||
           dec.find("\u2581") != std::string::npos)
    model = "llama";
  LETHE_CHECK(!model.empty(), where, ": tokenizer decoder is neither byte-level nor SentencePiece-style");
  return std::make_unique<Detokenizer>(model, tokens);
}

json read_json(const std::string& text, const std::string& where) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  LETHE_CHECK(!j.is_discarded() && j.is_object(), where, ": not a JSON object");
  return j;
}

}  // namespace

std::unique_ptr<Detokenizer> find_detokenizer(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / "manifest.json")) {
      const Checkpoint c = Checkpoint::open(path);
      if (!c.has_file("tokenizer.json")) return nullptr;
      return from_json(read_json(c.read_file("tokenizer.json"), path + "/tokenizer.json"), path + "/tokenizer.json");
    }
    const fs::path f = fs::path(path) / "tokenizer.json";
    if (!fs::exists(f)) return nullptr;
    return find_detokenizer(f.string());
  }
  std::ifstream in(path, std::ios::binary);
  LETHE_CHECK(in.good(), path, ": cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  return from_json(read_json(text, path), path);
}

}  // namespace lethe
