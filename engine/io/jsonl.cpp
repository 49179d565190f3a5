#include "engine/io/jsonl.h"

#include <fstream>

#include "engine/core/error.h"

namespace lethe {

void for_each_jsonl_object(const std::string& path, const std::string& what, const std::string& entries,
                           const std::string& expect,
                           const std::function<void(const nlohmann::json&, const std::string& where, int64_t line)>& fn) {
  std::ifstream in(path, std::ios::binary);
  LETHE_CHECK(in, what, " ", path, ": cannot open");
  int64_t n = 0;
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      LETHE_FAIL(where, ": not valid JSON (", e.what(), ")");
    }
    LETHE_CHECK(j.is_object(), where, ": expected a JSON object with ", expect);
    fn(j, where, line);
    ++n;
  }
  LETHE_CHECK(n > 0, what, " ", path, ": no ", entries);
}

}  // namespace lethe
