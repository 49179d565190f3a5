// Line-oriented JSON files (multiple-choice tasks, canaries): one object per line, blank
// lines skipped, CRLF accepted. Errors name the file and the line.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace lethe {

// Calls fn(object, "path:line") for every non-blank line, in order. A missing file, a line
// that is not valid JSON or not an object (`expect` describes what it should hold), or a
// file with no objects (`what` names the kind of file and of its entries: "canary file",
// "canaries") is a lethe::Error.
void for_each_jsonl_object(const std::string& path, const std::string& what, const std::string& entries,
                           const std::string& expect,
                           const std::function<void(const nlohmann::json&, const std::string& where, int64_t line)>& fn);

}  // namespace lethe
