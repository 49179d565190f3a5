#include "engine/io/model_config_yaml.h"

#include <sstream>

namespace lethe {

LlamaConfig llama_config_from_node(const ConfigNode& n) {
  LlamaConfig c;
  c.name = n.get<std::string>("name", c.name);
  c.vocab_size = n.require<int64_t>("vocab_size");
  c.dim = n.require<int64_t>("dim");
  c.n_layers = n.require<int64_t>("n_layers");
  c.n_heads = n.require<int64_t>("n_heads");
  c.n_kv_heads = n.get<int64_t>("n_kv_heads", c.n_heads);
  c.head_dim = n.get<int64_t>("head_dim", 0);
  c.ffn_dim = n.require<int64_t>("ffn_dim");
  c.norm_eps = n.get<double>("norm_eps", c.norm_eps);
  c.rope_theta = n.get<double>("rope_theta", c.rope_theta);
  c.max_seq_len = n.get<int64_t>("max_seq_len", c.max_seq_len);
  c.tie_embeddings = n.get<bool>("tie_embeddings", c.tie_embeddings);
  c.init_std = n.get<double>("init_std", c.init_std);
  if (n.has("rope_scaling")) {
    const ConfigNode s = n.child("rope_scaling");
    auto& r = c.rope_scaling;
    r.type = s.require<std::string>("type");
    r.factor = s.get<double>("factor", r.factor);
    r.low_freq_factor = s.get<double>("low_freq_factor", r.low_freq_factor);
    r.high_freq_factor = s.get<double>("high_freq_factor", r.high_freq_factor);
    r.original_max_position_embeddings =
        s.get<int64_t>("original_max_position_embeddings", r.original_max_position_embeddings);
    s.finish();
  }
  n.finish();
  try {
    c.validate();
  } catch (const Error& e) {
    LETHE_FAIL(n.file(), ": invalid model config: ", e.what());
  }
  return c;
}

LlamaConfig load_llama_config(const std::string& path, const std::vector<std::string>& overrides) {
  return llama_config_from_node(ConfigNode::load_file(path, overrides));
}

std::string llama_config_to_yaml(const LlamaConfig& c) {
  std::ostringstream os;
  os.precision(17);
  os << "name: " << c.name << "\nvocab_size: " << c.vocab_size << "\ndim: " << c.dim << "\nn_layers: " << c.n_layers
     << "\nn_heads: " << c.n_heads << "\nn_kv_heads: " << c.n_kv_heads << "\nhead_dim: " << c.head_dim
     << "\nffn_dim: " << c.ffn_dim << "\nnorm_eps: " << c.norm_eps << "\nrope_theta: " << c.rope_theta
     << "\nmax_seq_len: " << c.max_seq_len << "\ntie_embeddings: " << (c.tie_embeddings ? "true" : "false")
     << "\ninit_std: " << c.init_std << "\n";
  if (c.rope_scaling.type != "none") {
    const auto& r = c.rope_scaling;
    os << "rope_scaling:\n  type: " << r.type << "\n  factor: " << r.factor << "\n  low_freq_factor: "
       << r.low_freq_factor << "\n  high_freq_factor: " << r.high_freq_factor
       << "\n  original_max_position_embeddings: " << r.original_max_position_embeddings << "\n";
  }
  return os.str();
}

}  // namespace lethe
