#include "engine/io/model_loader.h"

#include <filesystem>

#include "engine/io/checkpoint.h"
#include "engine/io/hf_model.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/sha256.h"

namespace lethe {
namespace fs = std::filesystem;

namespace {
std::string digest(const std::vector<std::pair<std::string, Tensor>>& w) {
  std::string buf;
  for (const auto& [n, t] : w) {
    buf += n + shape_str(t.shape()) + dtype_name(t.dtype());
    buf.append(static_cast<const char*>(t.raw()), t.nbytes());
  }
  return to_hex(sha256(buf.data(), buf.size()));
}
}  // namespace

LoadedModel load_model(const std::string& path) {
  LoadedModel m;
  m.path = path;
  std::error_code ec;
  LETHE_CHECK(fs::exists(path, ec), path, ": no such model (a transformers directory or a lethe checkpoint)");
  if (fs::exists(fs::path(path) / "config.json")) {
    HfModel hf = read_hf_model(path);
    m.config = hf.llama;
    m.weights = std::move(hf.tensors);
  } else {
    const std::string latest = latest_checkpoint(path);
    const Checkpoint c = Checkpoint::open(latest.empty() ? path : latest);
    m.config = llama_config_from_json(c.manifest().at("model"), c.dir() + "/manifest.json");
    for (const ParamSpec& s : llama_param_specs(m.config)) {
      LETHE_CHECK(c.has("weights", s.name), c.dir(), ": checkpoint lacks weight '", s.name, "'");
      LETHE_CHECK(c.global_shape("weights", s.name) == s.shape, c.dir(), ": weight '", s.name, "' has shape ",
                  shape_str(c.global_shape("weights", s.name)), ", the manifest's model config needs ",
                  shape_str(s.shape));
      m.weights.emplace_back(s.name, c.read("weights", s.name, c.stored_dtype("weights", s.name)));
    }
  }
  m.sha256 = digest(m.weights);
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

std::string weights_sha256(const ParamSet& params) {
  std::vector<std::pair<std::string, Tensor>> w;
  for (size_t i = 0; i < params.size(); ++i) w.emplace_back(params.spec(i).name, params[i]);
  return digest(w);
}

}  // namespace lethe
