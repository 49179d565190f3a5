// Fuzz target: YAML configuration. The input is read as a model config, an unlearning
// recipe and a training config's optimizer section, the three ways the CLI reads YAML.
#include <cstdint>
#include <exception>

#include "engine/io/model_config_yaml.h"
#include "engine/io/optim_config_yaml.h"
#include "engine/io/yaml_config.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/schedule.h"
#include "engine/unlearn/recipe.h"
#include "tools/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lethe::fuzz::write_scratch("input.yaml", data, size);
  try {
    (void)lethe::load_llama_config(path);
  } catch (const std::exception&) {
  }
  try {
    (void)lethe::load_recipe(path, {});
  } catch (const std::exception&) {
  }
  try {
    const lethe::ConfigNode root = lethe::ConfigNode::load_file(path, {"train.steps=100"});
    if (root.has("optimizer")) {
      lethe::OptimConfig optim;
      lethe::LRSchedule schedule;
      lethe::read_optimizer_section(root.child("optimizer"), 100, optim, schedule);
    }
    root.finish();
  } catch (const std::exception&) {
  }
  return 0;
}
