#include "engine/io/model_checkpoint.h"

#include <set>

namespace lethe {
using json = nlohmann::json;

void add_params(CheckpointWriter& w, const std::string& group, const ParamSet& set) {
  for (size_t i = 0; i < set.size(); ++i) w.add(group, set.spec(i).name, set[i]);
}

void load_params(const Checkpoint& c, const std::string& group, ParamSet& set) {
  const auto stored = c.names(group);
  LETHE_CHECK(!stored.empty(), c.dir(), ": checkpoint has no '", group, "' tensors");
  std::set<std::string> expected;
  for (size_t i = 0; i < set.size(); ++i) {
    const std::string& name = set.spec(i).name;
    expected.insert(name);
    LETHE_CHECK(c.has(group, name), c.dir(), ": checkpoint lacks '", group, "/", name, "'");
    const Shape gs = c.global_shape(group, name);
    LETHE_CHECK(gs == set.spec(i).shape, c.dir(), ": '", group, "/", name, "' has shape ", shape_str(gs),
                ", the model expects ", shape_str(set.spec(i).shape));
    set[i].copy_from(c.read(group, name, set[i].dtype()));
  }
  for (const auto& n : stored)
    LETHE_CHECK(expected.count(n), c.dir(), ": checkpoint holds '", group, "/", n, "', which this model does not have");
}

json llama_config_to_json(const LlamaConfig& c) {
  json j = {{"name", c.name},         {"vocab_size", c.vocab_size},   {"dim", c.dim},
            {"n_layers", c.n_layers}, {"n_heads", c.n_heads},         {"n_kv_heads", c.n_kv_heads},
            {"head_dim", c.head_dim}, {"ffn_dim", c.ffn_dim},         {"norm_eps", c.norm_eps},
            {"rope_theta", c.rope_theta}, {"max_seq_len", c.max_seq_len}, {"tie_embeddings", c.tie_embeddings},
            {"init_std", c.init_std}};
  const auto& r = c.rope_scaling;
  j["rope_scaling"] = r.type == "none" ? json(nullptr)
                                       : json{{"type", r.type},
                                              {"factor", r.factor},
                                              {"low_freq_factor", r.low_freq_factor},
                                              {"high_freq_factor", r.high_freq_factor},
                                              {"original_max_position_embeddings", r.original_max_position_embeddings}};
  return j;
}

LlamaConfig llama_config_from_json(const json& j, const std::string& where) {
  LlamaConfig c;
  try {
    c.name = j.at("name").get<std::string>();
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.dim = j.at("dim").get<int64_t>();
    c.n_layers = j.at("n_layers").get<int64_t>();
    c.n_heads = j.at("n_heads").get<int64_t>();
    c.n_kv_heads = j.at("n_kv_heads").get<int64_t>();
    c.head_dim = j.at("head_dim").get<int64_t>();
    c.ffn_dim = j.at("ffn_dim").get<int64_t>();
    c.norm_eps = j.at("norm_eps").get<double>();
    c.rope_theta = j.at("rope_theta").get<double>();
    c.max_seq_len = j.at("max_seq_len").get<int64_t>();
    c.tie_embeddings = j.at("tie_embeddings").get<bool>();
    c.init_std = j.value("init_std", c.init_std);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      const json& r = j["rope_scaling"];
      c.rope_scaling.type = r.at("type").get<std::string>();
      c.rope_scaling.factor = r.at("factor").get<double>();
      c.rope_scaling.low_freq_factor = r.at("low_freq_factor").get<double>();
      c.rope_scaling.high_freq_factor = r.at("high_freq_factor").get<double>();
      c.rope_scaling.original_max_position_embeddings = r.at("original_max_position_embeddings").get<int64_t>();
    }
    c.validate();
  } catch (const json::exception& e) {
    LETHE_FAIL(where, ": model config: ", e.what());
  } catch (const Error& e) {
    LETHE_FAIL(where, ": model config: ", e.what());
  }
  return c;
}

}  // namespace lethe
