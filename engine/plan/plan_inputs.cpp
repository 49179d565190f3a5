#include "engine/plan/plan_inputs.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "engine/core/error.h"
#include "engine/io/model_config_yaml.h"

namespace lethe::plan {
namespace {
namespace fs = std::filesystem;

std::vector<fs::path> config_roots() {
  std::vector<fs::path> roots;
  std::error_code ec;
  if (const char* d = std::getenv("LETHE_CONFIG_DIR"); d && *d) roots.push_back(d);
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  // An installed lethe (PREFIX/bin/lethe) finds PREFIX/share/lethe/configs, wherever the
  // prefix was moved; a build finds the source tree it was built from, wherever the build
  // directory is.
  if (!ec) roots.push_back(exe.parent_path().parent_path() / LETHE_DATADIR / "lethe" / "configs");
  roots.push_back(fs::path(LETHE_SOURCE_DIR) / "configs");
  roots.push_back(fs::current_path(ec) / "configs");
  return roots;
}

}  // namespace

std::string config_dir(const std::string& kind) {
  std::error_code ec;
  for (const fs::path& root : config_roots())
    if (fs::is_directory(root / kind, ec)) return (root / kind).string();
  return "";
}

namespace {

std::string known_names(const std::string& kind) {
  std::vector<std::string> names;
  for (const fs::path& root : config_roots()) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root / kind, ec))
      if (e.path().extension() == ".yaml") names.push_back(e.path().stem().string());
    if (!names.empty()) break;
  }
  std::sort(names.begin(), names.end());
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s.empty() ? "none found" : s;
}

}  // namespace

std::string find_config(const std::string& kind, const std::string& name) {
  std::error_code ec;
  if (fs::is_regular_file(name, ec)) return name;
  LETHE_CHECK(name.find('/') == std::string::npos && name.find(".yaml") == std::string::npos, name,
              ": no such file");
  for (const fs::path& root : config_roots()) {
    const fs::path p = root / kind / (name + ".yaml");
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  LETHE_FAIL("unknown ", kind == "models" ? "model preset" : "recipe", " '", name, "': not a file and not in configs/",
             kind, " (known: ", known_names(kind), ")");
}

LlamaConfig resolve_model(const std::string& name_or_path) { return load_llama_config(find_config("models", name_or_path)); }

RecipeNeeds recipe_needs(const Recipe& r, const LlamaConfig& model) {
  RecipeNeeds n;
  n.method = r.method;
  n.passes = int64_t(r.terms.size());
  n.grad_accum = r.grad_accum;
  n.optimizer_states = r.optim.type == "adamw" ? 2 : (r.optim.momentum != 0 ? 1 : 0);
  n.trainable = r.trainable;
  bool only_rmu = true;
  int64_t rmu_layer = -1;
  for (const TermSpec& t : r.terms) {
    const bool rmu = t.type == "rmu_forget" || t.type == "rmu_retain";
    only_rmu &= rmu;
    if (rmu) {
      LETHE_CHECK(t.layer >= 0 && t.layer < model.n_layers, r.file, ": term ", t.name(), ": layer ", t.layer,
                  " is outside the model's ", model.n_layers, " layers");
      rmu_layer = std::max(rmu_layer, t.layer);
    }
    // Terms that read the frozen original's logits every step: kl, adversarial, undial, and
    // random labels drawn from it (the engine keeps one frozen copy for all of them).
    if (t.type == "kl" || t.type == "adversarial" || t.type == "undial" ||
        (t.type == "random_labels" && t.label_source == "reference")) {
      n.ref_last_layer = model.n_layers - 1;
      n.ref_logits = true;
      ++n.ref_forwards;
    } else if (t.type == "rmu_retain") {
      n.ref_last_layer = std::max(n.ref_last_layer, t.layer);
      ++n.ref_forwards;
    }
  }
  if (only_rmu) n.hidden_last_layer = rmu_layer;
  return n;
}

}  // namespace lethe::plan
