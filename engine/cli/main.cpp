// The `lethe` command: one executable, subcommands as in git.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "engine/cli/commands.h"
#include "engine/core/error.h"
#include "kernels/cpu/blas_kernel.h"

namespace {
const char* kUsage =
    "usage: lethe <command> [args]\n"
    "\n"
    "commands:\n"
    "  unlearn RECIPE [key=value ...] make a model forget documents (GA, GA+GD, GA+KL, NPO, ...)\n"
    "  train CONFIG [key=value ...]   train a model by gradient descent on a token file\n"
    "  model-info MODEL.yaml          validate a model config and print its size and FLOPs\n"
    "  plan MODEL [--tp N --dp N ...] per-GPU memory and communication of a run; what fits\n"
    "  eval CKPT DATA.h5              NLL, perplexity and next-token accuracy on a token dataset\n"
    "  generate MODEL DATA.h5         greedy continuation of a document's prefix (prints text)\n"
    "  convert KIND SRC OUT           hf-to-lethe, lethe-to-hf, gguf-to-lethe model conversion\n"
    "  checkpoint-info DIR            verify a checkpoint and print its step, model and digests\n"
    "  version                        version, compiled backends and visible GPUs\n"
    "\n"
    "Run 'lethe <command> --help' for a command's options.\n";
}

int main(int argc, char** argv) {
  try {
    lethe::select_blas_kernel(argv);  // may re-execute this process with a better GEMM kernel
  } catch (const lethe::Error& e) {
    std::cerr << "lethe: error: " << e.what() << "\n";
    return 1;
  }
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = args[0];
  args.erase(args.begin());
  try {
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
      std::cout << kUsage;
      return 0;
    }
    if (cmd == "version" || cmd == "--version") return lethe::cli::version_main(args);
    if (cmd == "train") return lethe::cli::train_main(args);
    if (cmd == "unlearn") return lethe::cli::unlearn_main(args);
    if (cmd == "model-info") return lethe::cli::model_info_main(args);
    if (cmd == "plan") return lethe::cli::plan_main(args);
    if (cmd == "checkpoint-info") return lethe::cli::checkpoint_info_main(args);
    if (cmd == "convert") return lethe::cli::convert_main(args);
    if (cmd == "eval") return lethe::cli::eval_main(args);
    if (cmd == "generate") return lethe::cli::generate_main(args);
    std::cerr << "lethe: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  } catch (const lethe::Error& e) {
    std::cerr << "lethe: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "lethe: internal error: " << e.what() << "\n";
    return 1;
  }
}
