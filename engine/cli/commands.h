// Subcommands of the `lethe` executable. Each returns the process exit code; user errors
// are thrown as lethe::Error and reported by main().
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

namespace lethe::cli {

struct TrainSummary {
  std::vector<double> losses;  // loss at every step, before that step's update
  double tokens_per_s = 0;     // mean over the run, excluding the first step
  double mfu_flops = 0;        // achieved model FLOP/s (DESIGN.md's definition)
  int stopped_by = 0;          // the signal that stopped the run after a checkpoint (0: none)
};

// `lethe train CONFIG [key=value ...]`: descent on a token file, printing a line per
// log interval to `out`.
TrainSummary run_train(const std::string& config_path, const std::vector<std::string>& overrides, std::ostream& out);

int train_main(const std::vector<std::string>& args);
int version_main(const std::vector<std::string>& args);
int model_info_main(const std::vector<std::string>& args);
int checkpoint_info_main(const std::vector<std::string>& args);
int convert_main(const std::vector<std::string>& args);
int eval_main(const std::vector<std::string>& args);
int unlearn_main(const std::vector<std::string>& args);
int plan_main(const std::vector<std::string>& args);
int generate_main(const std::vector<std::string>& args);
std::string version_string();

}  // namespace lethe::cli
