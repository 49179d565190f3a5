#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "engine/cli/commands.h"
#include "engine/io/gguf.h"
#include "engine/io/hf_model.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/sha256.h"
#include "engine/model/llama.h"

namespace lethe::cli {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
const char* kUsage =
    "usage: lethe convert hf-to-lethe HF_DIR OUT        transformers model dir -> lethe checkpoint\n"
    "       lethe convert lethe-to-hf CKPT OUT [dtype=bf16|f16|f32] [shard_gb=5]\n"
    "                                                  lethe checkpoint -> transformers model dir\n"
    "       lethe convert gguf-to-lethe FILE.gguf OUT   llama.cpp GGUF (F32/F16/BF16/Q8_0/Q4_0/Q4_1) -> lethe\n"
    "  OUT must not exist. A checkpoint argument may also be a run directory (its newest checkpoint).\n"
    "  HF -> lethe -> HF keeps every tensor's name, dtype, shape and bytes.\n";

// A standalone model checkpoint: OUT itself is the checkpoint directory.
void write_model_checkpoint(const std::string& out, const LlamaConfig& cfg,
                            const std::vector<std::pair<std::string, Tensor>>& tensors, json source,
                            const json& hf_config, const json& tokenizer = json()) {
  std::error_code ec;
  LETHE_CHECK(!fs::exists(out, ec), out, ": already exists; choose a new output directory");
  fs::path p = fs::absolute(out).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  CheckpointWriter w(p.parent_path().string(), p.filename().string(), 0, /*update_latest=*/false);
  for (const auto& [name, t] : tensors) w.add("weights", name, t);
  if (!tokenizer.is_null()) w.add_file("tokenizer.json", tokenizer.dump() + "\n");
  json& m = w.manifest();
  m["kind"] = "model";
  m["step"] = 0;
  m["model"] = llama_config_to_json(cfg);
  m["source"] = std::move(source);
  if (!hf_config.is_null()) m["hf_config"] = hf_config;
  m["parallel"] = {{"tp", 1}, {"dp", 1}};
  m["lethe_version"] = LETHE_VERSION;
  std::cout << "wrote " << w.commit() << " (" << tensors.size() << " tensors)\n";
}

std::string resolve_checkpoint(const std::string& arg) {
  const std::string latest = latest_checkpoint(arg);
  return latest.empty() ? arg : latest;
}

int hf_to_lethe(const std::string& src, const std::string& out) {
  const HfModel m = read_hf_model(src);
  json files = json::array();
  for (const auto& f : m.files) files.push_back({{"file", f}, {"sha256", to_hex(sha256_file((fs::path(src) / f).string()))}});
  write_model_checkpoint(out, m.llama, m.tensors, {{"format", "safetensors"}, {"files", files}}, m.config);
  return 0;
}

int lethe_to_hf(const std::string& src, const std::string& out, const std::vector<std::string>& opts) {
  std::string dtype;
  double shard_gb = 5;
  for (const auto& o : opts) {
    if (o.rfind("dtype=", 0) == 0) dtype = o.substr(6);
    else if (o.rfind("shard_gb=", 0) == 0) {
      const std::string v = o.substr(9);
      char* end = nullptr;
      shard_gb = v.empty() ? NAN : std::strtod(v.c_str(), &end);
      LETHE_CHECK(!v.empty() && end == v.c_str() + v.size() && std::isfinite(shard_gb) && shard_gb > 0 &&
                      shard_gb < 1e6,
                  "convert: shard_gb must be a positive number of GB, got '", v, "'");
    }
    else LETHE_FAIL("convert lethe-to-hf: unknown option '", o, "' (dtype=, shard_gb=)");
  }
  LETHE_CHECK(dtype.empty() || dtype == "bf16" || dtype == "f16" || dtype == "f32", "convert: dtype '", dtype,
              "' is not one of bf16, f16, f32");
  LETHE_CHECK(shard_gb > 0, "convert: shard_gb must be positive");
  const Checkpoint c = Checkpoint::open(resolve_checkpoint(src));
  const LlamaConfig cfg = llama_config_from_json(c.manifest().at("model"), c.dir() + "/manifest.json");
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::string stored;
  for (const ParamSpec& s : llama_param_specs(cfg)) {
    const DType dt = dtype.empty()      ? c.stored_dtype("weights", s.name)
                     : dtype == "bf16" ? DType::bf16
                     : dtype == "f16"  ? DType::f16
                                       : DType::f32;
    stored = dtype_name(dt);
    Tensor t = c.read("weights", s.name, dt);
    LETHE_CHECK(t.shape() == s.shape, c.dir(), ": '", s.name, "' has shape ", shape_str(t.shape()));
    tensors.emplace_back(s.name, std::move(t));
  }
  const std::string torch_dtype = stored == "bf16" ? "bfloat16" : stored == "f16" ? "float16" : "float32";
  json config = c.manifest().contains("hf_config") ? c.manifest()["hf_config"] : hf_config_from_llama(cfg, torch_dtype);
  if (!dtype.empty()) config["torch_dtype"] = torch_dtype;
  write_hf_model(out, config, tensors, int64_t(shard_gb * double(1ull << 30)));
  std::cout << "wrote " << out << " (" << tensors.size() << " tensors, " << stored << ")\n";
  return 0;
}

int gguf_to_lethe(const std::string& src, const std::string& out) {
  const GgufFile g = GgufFile::open(src);
  const LlamaConfig cfg = g.llama_config();
  const auto tensors = g.llama_weights();
  const GgufTokenizer tok = g.tokenizer();
  json source = {{"format", "gguf"},
                 {"file", fs::path(src).filename().string()},
                 {"sha256", to_hex(sha256_file(src))},
                 {"tokenizer", {{"model", tok.model}, {"pre", tok.pre}, {"vocab", tok.tokens.size()},
                                {"bos_id", tok.bos_id}, {"eos_id", tok.eos_id}}}};
  // The vocabulary travels with the weights, so the checkpoint alone can decode ids.
  const json tokenizer = {{"format", "lethe-tokenizer"}, {"model", tok.model}, {"pre", tok.pre},
                          {"tokens", tok.tokens}, {"scores", tok.scores}, {"token_types", tok.token_types},
                          {"merges", tok.merges}, {"bos_id", tok.bos_id}, {"eos_id", tok.eos_id},
                          {"pad_id", tok.pad_id}, {"unk_id", tok.unk_id}};
  write_model_checkpoint(out, cfg, tensors, source, json(), tokenizer);
  return 0;
}
}  // namespace

int convert_main(const std::vector<std::string>& args) {
  if (args.size() < 3 || args[0] == "-h" || args[0] == "--help") {
    const bool help = !args.empty() && (args[0] == "-h" || args[0] == "--help");
    (help ? std::cout : std::cerr) << kUsage;
    return help ? 0 : 2;
  }
  const std::string& how = args[0];
  const std::vector<std::string> opts(args.begin() + 3, args.end());
  if (how == "hf-to-lethe" && opts.empty()) return hf_to_lethe(args[1], args[2]);
  if (how == "gguf-to-lethe" && opts.empty()) return gguf_to_lethe(args[1], args[2]);
  if (how == "lethe-to-hf") return lethe_to_hf(args[1], args[2], opts);
  std::cerr << "lethe convert: unknown conversion or extra arguments\n" << kUsage;
  return 2;
}

}  // namespace lethe::cli
