#include "engine/io/model_checkpoint.h"

#include <algorithm>
#include <set>

namespace lethe {
using json = nlohmann::json;

void add_params(CheckpointWriter& w, const std::string& group, const ParamSet& set,
                const std::function<bool(const ParamSpec&)>& keep) {
  for (size_t i = 0; i < set.size(); ++i) {
    const ParamSpec& s = set.spec(i);
    if (keep && !keep(s)) continue;
    w.add_slice(group, s.name, set[i], s.full_shape(), s.offsets());
  }
}

namespace {
struct Box {
  std::vector<int64_t> offset;  // in the whole tensor
  Shape shape;
  int64_t src;                  // first element in the piece's flat range
};

// Elements [begin, begin + n) of a tensor of local shape `shape` (row-major), as boxes of
// the whole tensor.
std::vector<Box> boxes(const ParamSpec& s, int64_t begin, int64_t n) {
  std::vector<Box> out;
  const std::vector<int64_t> base = s.offsets();
  if (s.shape.size() != 2) {
    LETHE_CHECK(s.shape.size() == 1, "optimizer state of '", s.name, "': unsupported rank ", s.shape.size());
    out.push_back({{base[0] + begin}, {n}, 0});
    return out;
  }
  const int64_t C = s.shape[1];
  int64_t done = 0;
  auto push = [&](int64_t r, int64_t c, int64_t rows, int64_t cols) {
    out.push_back({{base[0] + r, base[1] + c}, {rows, cols}, done});
    done += rows * cols;
  };
  int64_t pos = begin;
  if (pos % C != 0) {
    const int64_t len = std::min(n, C - pos % C);
    push(pos / C, pos % C, 1, len);
    pos += len;
  }
  const int64_t full = (begin + n - pos) / C;
  if (full > 0) {
    push(pos / C, 0, full, C);
    pos += full * C;
  }
  if (pos < begin + n) push(pos / C, 0, 1, begin + n - pos);
  return out;
}
}  // namespace

void add_optimizer_shard(CheckpointWriter& w, const std::string& group, const ShardedOptimizer& opt,
                         const Tensor& buf, const ParamSet& params,
                         const std::function<bool(const ParamSpec&)>& keep) {
  for (const auto& p : opt.pieces()) {
    const ParamSpec& s = params.spec(p.param);
    if (keep && !keep(s)) continue;
    for (const Box& b : boxes(s, p.param_begin, p.count))
      w.add_slice(group, s.name, buf.view(p.shard_begin + b.src, b.shape), s.full_shape(), b.offset);
  }
}

void load_optimizer_shard(const Checkpoint& c, const std::string& group, const ShardedOptimizer& opt, Tensor& buf,
                          const ParamSet& params) {
  for (const auto& p : opt.pieces()) {
    const ParamSpec& s = params.spec(p.param);
    LETHE_CHECK(c.has(group, s.name), c.dir(), ": checkpoint lacks '", group, "/", s.name, "'");
    const Shape gs = c.global_shape(group, s.name);
    LETHE_CHECK(gs == s.full_shape(), c.dir(), ": '", group, "/", s.name, "' has shape ", shape_str(gs),
                ", the model expects ", shape_str(s.full_shape()));
    for (const Box& b : boxes(s, p.param_begin, p.count)) {
      Tensor dst = buf.view(p.shard_begin + b.src, b.shape);
      dst.copy_from(c.read_slice(group, s.name, b.offset, b.shape, buf.dtype()));
    }
  }
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
    LETHE_CHECK(gs == set.spec(i).full_shape(), c.dir(), ": '", group, "/", name, "' has shape ", shape_str(gs),
                ", the model expects ", shape_str(set.spec(i).full_shape()));
    // A bf16 tensor (the weights on a device) reads the stored f32 values and converts them
    // once, rounding to nearest as the CPU emulation does.
    const DType dt = set[i].dtype() == DType::bf16 ? DType::f32 : set[i].dtype();
    set[i].copy_from(set.spec(i).sharded() ? c.read_slice(group, name, set.spec(i).offsets(), set.spec(i).shape, dt)
                                           : c.read(group, name, dt));
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
