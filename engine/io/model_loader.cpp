#include "engine/io/model_loader.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/io/checkpoint.h"
#include "engine/io/hf_model.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/sha256.h"
#include "engine/optim/run_optimizer.h"

namespace lethe {
namespace fs = std::filesystem;

namespace {
void digest_add(Sha256Stream& h, const std::string& name, const Tensor& t) {
  const std::string head = name + shape_str(t.shape()) + dtype_name(t.dtype());
  h.update(head.data(), head.size());
  h.update(t.raw(), t.nbytes());
}

// This rank's block of the whole weight `whole` into p (converting to p's dtype).
void copy_block(Tensor& p, const ParamSpec& s, const Tensor& whole, const std::string& where) {
  LETHE_CHECK(whole.shape() == s.full_shape(), where, ": weight '", s.name, "' has shape ", shape_str(whole.shape()),
              ", the model expects ", shape_str(s.full_shape()));
  if (!s.sharded()) {
    p.copy_from(whole);
  } else if (s.shard_dim == 0) {
    p.copy_from(whole.slice_rows(s.shard_offset, s.shard_offset + s.shape[0]));
  } else {
    LETHE_CHECK(whole.ndim() == 2 && s.shard_dim == 1, s.name, ": unexpected tensor-parallel split");
    // Columns [offset, offset + n) of every row, gathered in the stored dtype, then converted.
    const Tensor& f = whole;
    const int64_t R = f.dim(0), C = f.dim(1), n = s.shape[1];
    const size_t es = dtype_size(f.dtype());
    Tensor block = Tensor::empty(s.shape, f.dtype());
    for (int64_t i = 0; i < R; ++i)
      std::memcpy(static_cast<char*>(block.raw()) + size_t(i * n) * es,
                  static_cast<const char*>(f.raw()) + size_t(i * C + s.shard_offset) * es, size_t(n) * es);
    p.copy_from(block);
  }
}
}  // namespace

ModelSource ModelSource::open(const std::string& path) {
  ModelSource m;
  m.path_ = path;
  std::error_code ec;
  LETHE_CHECK(fs::exists(path, ec), path, ": no such model (a transformers directory or a lethe checkpoint)");
  if (fs::exists(fs::path(path) / "config.json")) {
    m.hf_ = std::make_shared<const HfModelFiles>(HfModelFiles::open(path));
    m.config_ = m.hf_->llama();
    return m;
  }
  const std::string latest = latest_checkpoint(path);
  auto c = std::make_shared<const Checkpoint>(Checkpoint::open(latest.empty() ? path : latest));
  m.config_ = llama_config_from_json(c->manifest().at("model"), c->dir() + "/manifest.json");
  for (const ParamSpec& s : llama_param_specs(m.config_)) {
    LETHE_CHECK(c->has("weights", s.name), c->dir(), ": checkpoint lacks weight '", s.name, "'");
    LETHE_CHECK(c->global_shape("weights", s.name) == s.shape, c->dir(), ": weight '", s.name, "' has shape ",
                shape_str(c->global_shape("weights", s.name)), ", the manifest's model config needs ",
                shape_str(s.shape));
  }
  m.checkpoint_ = std::move(c);
  return m;
}

LlamaConfig ModelSource::peek_config(const std::string& path) {
  const fs::path hf = fs::path(path) / "config.json";
  if (fs::exists(hf)) {
    std::ifstream in(hf);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      LETHE_FAIL(hf.string(), ": not valid JSON: ", e.what());
    }
    return llama_config_from_hf(j, hf.string());
  }
  const std::string latest = latest_checkpoint(path);
  const fs::path manifest = fs::path(latest.empty() ? path : latest) / "manifest.json";
  std::ifstream in(manifest);
  LETHE_CHECK(in.good(), path, ": no such model (a transformers directory or a lethe checkpoint)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    LETHE_FAIL(manifest.string(), ": not valid JSON: ", e.what());
  }
  LETHE_CHECK(j.is_object() && j.contains("model"), manifest.string(), ": no model config");
  return llama_config_from_json(j.at("model"), manifest.string());
}

Tensor ModelSource::read(const std::string& name) const {
  if (hf_) return hf_->read(name);
  return checkpoint_->read("weights", name, checkpoint_->stored_dtype("weights", name));
}

Tensor ModelSource::read_block(const std::string& name, const std::vector<int64_t>& offset, const Shape& shape) const {
  if (hf_) return hf_->read_block(name, offset, shape);
  return checkpoint_->read_slice("weights", name, offset, shape, checkpoint_->stored_dtype("weights", name));
}

std::string load_weights(LlamaModel& model, const ModelSource& src, RunOptimizer* master) {
  ParamSet& params = model.params();
  const std::vector<ParamSpec> whole = llama_param_specs(src.config());
  LETHE_CHECK(whole.size() == params.size(), src.path(), ": holds ", whole.size(), " weights, the model has ",
              params.size(), " parameters");
  // One rank hashes: the others read only what they keep, so a node of 8 ranks at tp=8
  // reads the model about twice, not 8 times, and one rank spends the hashing time.
  Communicator& world = model.grid().world();
  const bool hashes = world.rank() == 0;
  Sha256Stream h;
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& s = params.spec(i);
    LETHE_CHECK(whole[i].name == s.name, src.path(), ": weight ", i, " is '", whole[i].name, "', the model's is '",
                s.name, "'");
    const bool block_read = !hashes && s.sharded();
    Tensor t;
    if (block_read) {
      LETHE_CHECK(whole[i].shape == s.full_shape(), src.path(), ": weight '", s.name, "' has shape ",
                  shape_str(whole[i].shape), ", the model expects ", shape_str(s.full_shape()));
      t = src.read_block(s.name, s.offsets(), s.shape);
    } else {
      t = src.read(s.name);
      if (hashes) digest_add(h, s.name, t);
    }
    // A block read is this rank's block already: copied whole.
    const ParamSpec as_read = block_read ? ParamSpec{s.name, s.shape} : s;
    copy_block(params[i], as_read, t, src.path());
    if (master && master->precision() == Precision::bf16) {
      Tensor block = Tensor::empty(s.shape, DType::f32);
      copy_block(block, as_read, t, src.path());
      master->set_master(i, block);
    }
  }
  // Any other copy of the weights the optimizer keeps (ZeRO's f32 shard) follows the model.
  if (master && master->precision() != Precision::bf16) master->params_changed();
  std::string digest = hashes ? to_hex(h.final()) : std::string(64, '0');
  if (world.size() > 1) {
    Tensor bytes = Tensor::empty({int64_t(digest.size())}, DType::i32);
    for (size_t k = 0; k < digest.size(); ++k) bytes.data<int32_t>()[k] = digest[k];
    world.broadcast(bytes, 0);
    for (size_t k = 0; k < digest.size(); ++k) digest[k] = char(bytes.data<int32_t>()[k]);
  }
  return digest;
}

void load_first_layers(LlamaModel& model, const ModelSource& src) {
  LlamaConfig want = src.config();
  want.n_layers = model.config().n_layers;
  LETHE_CHECK(model.config().n_layers >= 1 && model.config().n_layers <= src.config().n_layers &&
                  llama_config_to_json(model.config()) == llama_config_to_json(want),
              src.path(), ": a model of its first ", model.config().n_layers, " layers must have its config otherwise");
  ParamSet& params = model.params();
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& s = params.spec(i);
    if (s.sharded())  // this rank's block, read as such and copied whole
      copy_block(params[i], ParamSpec{s.name, s.shape}, src.read_block(s.name, s.offsets(), s.shape), src.path());
    else
      copy_block(params[i], s, src.read(s.name), src.path());
  }
}

std::string weights_sha256(const ParamSet& params) {
  Sha256Stream h;
  // A model on a device hashes its host copy (bf16 widened to f32): the digest of the
  // emulation holding the same values, and of the checkpoint the run saved.
  for (size_t i = 0; i < params.size(); ++i) digest_add(h, params.spec(i).name, to_host(params[i]));
  return to_hex(h.final());
}

LoadedModel load_model(const std::string& path) {
  const ModelSource src = ModelSource::open(path);
  LoadedModel m;
  m.path = path;
  m.config = src.config();
  Sha256Stream h;
  for (const ParamSpec& s : llama_param_specs(m.config)) {
    m.weights.emplace_back(s.name, src.read(s.name));
    digest_add(h, s.name, m.weights.back().second);
  }
  m.sha256 = to_hex(h.final());
  return m;
}

void assign_weights(LlamaModel& model, const LoadedModel& w) {
  for (const auto& [name, t] : w.weights) {
    Tensor& p = model.params().get(name);
    LETHE_CHECK(p.shape() == t.shape(), w.path, ": weight '", name, "' has shape ", shape_str(t.shape()),
                ", the model expects ", shape_str(p.shape()));
    p.copy_from(t);
  }
}

}  // namespace lethe
