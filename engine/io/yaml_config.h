// Validated YAML configuration. Every key read is recorded; `finish()` rejects keys that
// nobody read, so a typo ("learning_rate" for "lr") is an error naming the key and the
// file instead of a silently ignored setting. Command-line `a.b=value` overrides are
// applied to the tree before it is read.
#pragma once
#include <yaml-cpp/yaml.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/core/error.h"

namespace lethe {

class ConfigNode {
 public:
  // Loads `path`, applies overrides ("train.lr=3e-4"), and returns the root mapping.
  static ConfigNode load_file(const std::string& path, const std::vector<std::string>& overrides = {});
  // A mapping parsed from text; `file` only labels error messages.
  static ConfigNode from_string(const std::string& text, const std::string& file);

  const std::string& file() const { return state_->file; }
  std::string where(const std::string& key) const;  // "file: key 'train.lr'"

  bool has(const std::string& key) const;
  // The keys of this mapping, in file order.
  std::vector<std::string> keys() const;
  bool is_map(const std::string& key) const;

  template <typename T>
  T get(const std::string& key, const T& fallback) const {
    return has(key) ? require<T>(key) : (mark(key), fallback);
  }
  template <typename T>
  T require(const std::string& key) const;
  ConfigNode child(const std::string& key) const;

  // A path value made absolute relative to the directory of the file that holds it.
  std::string path(const std::string& key) const;
  // One path or a list of paths, each resolved like path().
  std::vector<std::string> paths(const std::string& key) const;

  // Errors on the first key of this mapping that was never read.
  void finish() const;

 private:
  struct State {
    std::string file;
    std::set<std::string> seen;  // full dotted keys
  };
  ConfigNode(YAML::Node node, std::shared_ptr<State> state, std::string prefix);
  std::string full(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }
  void mark(const std::string& key) const { state_->seen.insert(full(key)); }
  [[noreturn]] void type_error(const std::string& key, const char* expected) const;

  YAML::Node node_;
  std::shared_ptr<State> state_;
  std::string prefix_;
};

template <> std::string ConfigNode::require<std::string>(const std::string& key) const;
template <> double ConfigNode::require<double>(const std::string& key) const;
template <> int64_t ConfigNode::require<int64_t>(const std::string& key) const;
template <> bool ConfigNode::require<bool>(const std::string& key) const;

}  // namespace lethe
