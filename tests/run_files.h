// Reading a run's output files in tests that compare two runs.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lethe::test {

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// metrics.jsonl of a run directory without its wall-clock fields (tokens/s, MFU), which
// differ between any two runs.
inline std::vector<nlohmann::json> metrics_without_wall_clock(const std::filesystem::path& run_dir) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("tokens_per_s");
    j.erase("mfu");
    lines.push_back(j);
  }
  return lines;
}

}  // namespace lethe::test
