#include "engine/io/hf_model.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "engine/core/log.h"
#include "engine/io/safetensors.h"
#include "engine/model/llama.h"

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
json read_json(const std::string& path) {
  std::ifstream in(path);
  LETHE_CHECK(in.good(), path, ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    LETHE_FAIL(path, ": not valid JSON: ", e.what());
  }
}

template <typename T>
T field(const json& j, const char* key, const std::string& where) {
  LETHE_CHECK(j.contains(key) && !j[key].is_null(), where, ": key '", key, "' is missing");
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    LETHE_FAIL(where, ": key '", key, "' has the wrong type");
  }
}
}  // namespace

LlamaConfig llama_config_from_hf(const json& j, const std::string& where) {
  LETHE_CHECK(j.is_object(), where, ": config.json is not an object");
  const std::string type = j.value("model_type", "");
  LETHE_CHECK(type == "llama" || type == "mistral", where, ": model_type '", type,
              "' is not supported (llama, mistral)");
  if (type == "mistral" && j.contains("sliding_window") && !j["sliding_window"].is_null())
    LETHE_CHECK(j["sliding_window"].get<int64_t>() >= j.value("max_position_embeddings", int64_t(0)), where,
                ": sliding-window attention (sliding_window = ", j["sliding_window"], ") is not supported");
  LETHE_CHECK(j.value("hidden_act", "silu") == "silu", where, ": hidden_act '", j.value("hidden_act", ""),
              "' is not supported (silu)");
  LETHE_CHECK(!j.value("attention_bias", false), where, ": attention_bias = true is not supported");
  LETHE_CHECK(!j.value("mlp_bias", false), where, ": mlp_bias = true is not supported");
  LlamaConfig c;
  c.name = j.value("_name_or_path", type);
  c.vocab_size = field<int64_t>(j, "vocab_size", where);
  c.dim = field<int64_t>(j, "hidden_size", where);
  c.n_layers = field<int64_t>(j, "num_hidden_layers", where);
  c.n_heads = field<int64_t>(j, "num_attention_heads", where);
  c.n_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                     ? field<int64_t>(j, "num_key_value_heads", where)
                     : c.n_heads;
  c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? field<int64_t>(j, "head_dim", where) : 0;
  if (c.head_dim && c.head_dim * c.n_heads == c.dim) c.head_dim = 0;  // the default, keep configs canonical
  c.ffn_dim = field<int64_t>(j, "intermediate_size", where);
  c.norm_eps = j.value("rms_norm_eps", 1e-6);
  c.max_seq_len = j.value("max_position_embeddings", int64_t(2048));
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  c.init_std = j.value("initializer_range", 0.02);
  // transformers 5 moved rope settings into rope_parameters; older files use rope_theta
  // and rope_scaling.
  json rope = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"]
              : j.contains("rope_scaling") && j["rope_scaling"].is_object()  ? j["rope_scaling"]
                                                                              : json::object();
  c.rope_theta = rope.value("rope_theta", j.value("rope_theta", 10000.0));
  const std::string rt = rope.value("rope_type", rope.value("type", std::string("default")));
  if (rt == "llama3") {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = field<double>(rope, "factor", where + ": rope scaling");
    c.rope_scaling.low_freq_factor = field<double>(rope, "low_freq_factor", where + ": rope scaling");
    c.rope_scaling.high_freq_factor = field<double>(rope, "high_freq_factor", where + ": rope scaling");
    c.rope_scaling.original_max_position_embeddings =
        field<int64_t>(rope, "original_max_position_embeddings", where + ": rope scaling");
  } else if (rt == "linear") {
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = field<double>(rope, "factor", where + ": rope scaling");
  } else {
    LETHE_CHECK(rt == "default", where, ": rope type '", rt, "' is not supported (default, linear, llama3)");
  }
  try {
    c.validate();
  } catch (const Error& e) {
    LETHE_FAIL(where, ": ", e.what());
  }
  return c;
}

json hf_config_from_llama(const LlamaConfig& c, const std::string& torch_dtype) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.dim},
            {"intermediate_size", c.ffn_dim},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"head_dim", c.hd()},
            {"hidden_act", "silu"},
            {"max_position_embeddings", c.max_seq_len},
            {"rms_norm_eps", c.norm_eps},
            {"rope_theta", c.rope_theta},
            {"tie_word_embeddings", c.tie_embeddings},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"initializer_range", c.init_std},
            {"torch_dtype", torch_dtype}};
  const auto& r = c.rope_scaling;
  if (r.type == "llama3")
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", r.factor},
                         {"low_freq_factor", r.low_freq_factor},
                         {"high_freq_factor", r.high_freq_factor},
                         {"original_max_position_embeddings", r.original_max_position_embeddings}};
  else if (r.type == "linear")
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", r.factor}};
  return j;
}

HfModelFiles HfModelFiles::open(const std::string& dir) {
  std::error_code ec;
  LETHE_CHECK(fs::is_directory(dir, ec), dir, ": not a directory");
  HfModelFiles m;
  m.dir_ = dir;
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  m.config_ = read_json(cfg_path);
  m.llama_ = llama_config_from_hf(m.config_, cfg_path);

  // name -> file, from the index when the weights are sharded.
  std::map<std::string, std::string> where;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const json idx = read_json(index.string());
    LETHE_CHECK(idx.contains("weight_map") && idx["weight_map"].is_object(), index.string(),
                ": no weight_map object");
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      LETHE_CHECK(it.value().is_string(), index.string(), ": weight_map entry '", it.key(), "' is not a file name");
      const std::string file = it.value().get<std::string>();
      LETHE_CHECK(fs::path(file).filename().string() == file, index.string(), ": shard '", file,
                  "' is not a plain file name");
      where[it.key()] = file;
    }
  } else {
    LETHE_CHECK(fs::exists(fs::path(dir) / "model.safetensors"), dir,
                ": neither model.safetensors nor model.safetensors.index.json found");
  }
  auto file_for = [&](const std::string& name) -> const SafetensorsFile* {
    const std::string f = where.empty() ? "model.safetensors" : (where.count(name) ? where[name] : "");
    if (f.empty()) return nullptr;
    if (!m.open_.count(f)) {
      m.open_.emplace(f, SafetensorsFile::open((fs::path(dir) / f).string()));
      m.files_.push_back(f);
    }
    const SafetensorsFile& sf = m.open_.at(f);
    if (!sf.has(name)) return nullptr;
    m.file_of_[name] = f;
    return &sf;
  };
  // Every check from the headers, before any weight is read.
  std::set<std::string> expected;
  for (const ParamSpec& s : llama_param_specs(m.llama_)) {
    expected.insert(s.name);
    const SafetensorsFile* f = file_for(s.name);
    LETHE_CHECK(f, dir, ": tensor '", s.name, "' is missing");
    const SafetensorsEntry& e = f->entry(s.name);
    LETHE_CHECK(e.shape == s.shape, f->path(), ": tensor '", s.name, "' has shape ", shape_str(e.shape),
                ", config.json implies ", shape_str(s.shape));
    LETHE_CHECK(e.dtype == "F32" || e.dtype == "BF16" || e.dtype == "F16", f->path(), ": tensor '", s.name, "' is ",
                e.dtype, "; weights must be F32, BF16 or F16");
  }
  // Anything else in the files is a model lethe would silently drop: refuse, except a
  // tied lm_head copy and the rotary buffer old exports carry.
  for (const auto& [fname, sf] : m.open_)
    for (const auto& n : sf.names()) {
      if (expected.count(n)) continue;
      if (n.find("rotary_emb.inv_freq") != std::string::npos) continue;
      if (m.llama_.tie_embeddings && n == "lm_head.weight") {
        log::warn(sf.path(), ": ignoring lm_head.weight (the config ties it to the embedding)");
        continue;
      }
      LETHE_FAIL(sf.path(), ": unexpected tensor '", n, "' (not part of a ", m.llama_.n_layers,
                 "-layer Llama with this config)");
    }
  return m;
}

Tensor HfModelFiles::read(const std::string& name) const {
  const auto it = file_of_.find(name);
  LETHE_CHECK(it != file_of_.end(), dir_, ": no weight '", name, "' in this model");
  return open_.at(it->second).tensor(name);
}

Tensor HfModelFiles::read_block(const std::string& name, const std::vector<int64_t>& offset, const Shape& shape) const {
  const auto it = file_of_.find(name);
  LETHE_CHECK(it != file_of_.end(), dir_, ": no weight '", name, "' in this model");
  return open_.at(it->second).block(name, offset, shape);
}

HfModel read_hf_model(const std::string& dir) {
  const HfModelFiles f = HfModelFiles::open(dir);
  HfModel m;
  m.config = f.config();
  m.llama = f.llama();
  m.files = f.files();
  for (const ParamSpec& s : llama_param_specs(m.llama)) m.tensors.emplace_back(s.name, f.read(s.name));
  return m;
}

void write_hf_model(const std::string& dir, const json& config,
                    const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t shard_bytes) {
  std::error_code ec;
  LETHE_CHECK(!fs::exists(dir, ec), dir, ": already exists; choose a new output directory");
  LETHE_CHECK(shard_bytes > 0, "shard size must be positive");
  // Stage beside the destination and rename, so a failed export leaves nothing half-written.
  const std::string tmp = dir + ".partial";
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  LETHE_CHECK(!ec, tmp, ": cannot create: ", ec.message());
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  int64_t total = 0, in_shard = 0;
  for (const auto& nt : tensors) {
    const int64_t b = int64_t(nt.second.nbytes());
    if (in_shard > 0 && in_shard + b > shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(nt);
    in_shard += b;
    total += b;
  }
  const std::map<std::string, std::string> meta{{"format", "pt"}};
  if (shards.size() == 1) {
    write_safetensors((fs::path(tmp) / "model.safetensors").string(), shards[0], meta);
  } else {
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", json::object()}};
    for (size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors((fs::path(tmp) / name).string(), shards[i], meta);
      for (const auto& nt : shards[i]) index["weight_map"][nt.first] = name;
    }
    std::ofstream(fs::path(tmp) / "model.safetensors.index.json") << index.dump(2) << "\n";
  }
  std::ofstream(fs::path(tmp) / "config.json") << config.dump(2) << "\n";
  fs::rename(tmp, dir, ec);
  LETHE_CHECK(!ec, "cannot rename ", tmp, " to ", dir, ": ", ec.message());
}

}  // namespace lethe
