#include <omp.h>

#include <cstdio>
#include <iostream>
#include <sstream>

#include "engine/cli/commands.h"
#include "engine/io/model_config_yaml.h"
#include "engine/plan/plan_inputs.h"
#include "kernels/cpu/blas_kernel.h"
#include "kernels/device.h"

namespace lethe::cli {

std::string version_string() {
  std::ostringstream os;
  os << "lethe " << LETHE_VERSION << "\n";
  os << "  backends: cpu (OpenMP, " << omp_get_max_threads() << " threads, OpenBLAS)"
     << ", cuda " << (LETHE_BUILD_CUDA ? "compiled" : "not compiled") << ", nccl "
     << (LETHE_BUILD_NCCL ? "compiled" : "not compiled") << ", mpi " << (LETHE_BUILD_MPI ? "found" : "not found")
     << "\n";
  os << "  " << blas_kernel_line() << "\n";
  const std::string presets = plan::config_dir("models");
  os << "  model presets: " << (presets.empty() ? "none found (set LETHE_CONFIG_DIR)" : presets) << "\n";
  const auto devs = cuda_devices();
  if (devs.empty()) {
    os << "  cuda devices: none visible\n";
  } else {
    for (size_t i = 0; i < devs.size(); ++i)
      os << "  cuda device " << i << ": " << devs[i].name << " (sm_" << devs[i].major << devs[i].minor << ", "
         << devs[i].memory_bytes / (1ull << 20) << " MiB)\n";
  }
  return os.str();
}

int version_main(const std::vector<std::string>&) {
  std::cout << version_string();
  return 0;
}

int model_info_main(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0] == "-h" || args[0] == "--help") {
    std::cout << "usage: lethe model-info MODEL.yaml\n  Validates a model config and prints its size.\n";
    return args.size() == 1 ? 0 : 2;
  }
  const LlamaConfig c = load_llama_config(args[0]);
  const double p = double(c.n_params());
  std::printf("%s\n", llama_config_to_yaml(c).c_str());
  std::printf("parameters: %.0f (%.3f B)\n", p, p / 1e9);
  std::printf("weights: %.2f GiB bf16, %.2f GiB f32; AdamW state (f32 master + 2 moments): %.2f GiB\n",
              p * 2 / (1u << 30), p * 4 / (1u << 30), p * 12 / (1u << 30));
  std::printf("training FLOPs per token at seq %lld: %.4g\n", (long long)c.max_seq_len,
              c.train_flops_per_token(c.max_seq_len));
  return 0;
}

}  // namespace lethe::cli
