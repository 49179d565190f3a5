#include "engine/io/yaml_config.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace lethe {
namespace fs = std::filesystem;

ConfigNode::ConfigNode(YAML::Node node, std::shared_ptr<State> state, std::string prefix)
    : node_(std::move(node)), state_(std::move(state)), prefix_(std::move(prefix)) {}

namespace {
YAML::Node parse(const std::string& text, const std::string& file) {
  try {
    YAML::Node n = YAML::Load(text);
    if (n.IsNull()) n = YAML::Node(YAML::NodeType::Map);
    LETHE_CHECK(n.IsMap(), file, ": expected a mapping of keys at the top level");
    return n;
  } catch (const YAML::Exception& e) {
    LETHE_FAIL(file, ": YAML syntax error at line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg);
  }
}

void apply_override(YAML::Node root, const std::string& kv, const std::string& file) {
  const size_t eq = kv.find('=');
  LETHE_CHECK(eq != std::string::npos && eq > 0, "override '", kv, "' is not of the form key=value");
  const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) {
    LETHE_CHECK(!p.empty(), "override '", kv, "' has an empty key segment");
    parts.push_back(p);
  }
  YAML::Node value_node;
  try {
    value_node = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    LETHE_FAIL("override '", kv, "': cannot parse value: ", e.msg);
  }
  // yaml-cpp node assignment rebinds handles, so walk with fresh lookups each level.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    LETHE_CHECK(next.IsMap(), "override '", kv, "': '", parts[i], "' in ", file, " is not a mapping");
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value_node;
}
}  // namespace

ConfigNode ConfigNode::from_string(const std::string& text, const std::string& file) {
  auto st = std::make_shared<State>();
  st->file = file;
  return ConfigNode(parse(text, file), st, "");
}

ConfigNode ConfigNode::load_file(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  LETHE_CHECK(fs::exists(path, ec), path, ": no such file");
  LETHE_CHECK(fs::is_regular_file(path, ec), path, ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  LETHE_CHECK(in.good(), path, ": cannot open for reading");
  std::stringstream buf;
  buf << in.rdbuf();
  ConfigNode n = from_string(buf.str(), path);
  for (const auto& kv : overrides) apply_override(n.node_, kv, path);
  return n;
}

std::string ConfigNode::where(const std::string& key) const { return file() + ": key '" + full(key) + "'"; }

bool ConfigNode::has(const std::string& key) const {
  const YAML::Node n = node_[key];
  return n.IsDefined() && !n.IsNull();
}

std::vector<std::string> ConfigNode::keys() const {
  std::vector<std::string> out;
  for (auto it = node_.begin(); it != node_.end(); ++it) out.push_back(it->first.as<std::string>());
  return out;
}

bool ConfigNode::is_map(const std::string& key) const { return has(key) && node_[key].IsMap(); }

void ConfigNode::type_error(const std::string& key, const char* expected) const {
  const YAML::Node n = node_[key];
  std::string got = n.IsScalar() ? "'" + n.Scalar() + "'" : n.IsMap() ? "a mapping" : "a list";
  LETHE_FAIL(where(key), ": expected ", expected, ", got ", got);
}

template <>
std::string ConfigNode::require<std::string>(const std::string& key) const {
  mark(key);
  LETHE_CHECK(has(key), where(key), ": required key is missing");
  if (!node_[key].IsScalar()) type_error(key, "a string");
  return node_[key].Scalar();
}

template <>
double ConfigNode::require<double>(const std::string& key) const {
  mark(key);
  LETHE_CHECK(has(key), where(key), ": required key is missing");
  if (!node_[key].IsScalar()) type_error(key, "a number");
  // Parsed here, not by yaml-cpp, which accepts trailing garbage on some versions.
  const std::string& s = node_[key].Scalar();
  char* end = nullptr;
  const double v = s.empty() ? NAN : std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) type_error(key, "a finite number");
  return v;
}

template <>
int64_t ConfigNode::require<int64_t>(const std::string& key) const {
  mark(key);
  LETHE_CHECK(has(key), where(key), ": required key is missing");
  if (!node_[key].IsScalar()) type_error(key, "an integer");
  // Whole-string parse: yaml-cpp would read "2.5" as 2.
  const std::string& s = node_[key].Scalar();
  int64_t v = 0;
  const char* b = s.data() + (s.size() > 1 && s[0] == '+' ? 1 : 0);
  const auto [ptr, ec] = std::from_chars(b, s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) type_error(key, "an integer");
  return v;
}

template <>
bool ConfigNode::require<bool>(const std::string& key) const {
  mark(key);
  LETHE_CHECK(has(key), where(key), ": required key is missing");
  if (!node_[key].IsScalar()) type_error(key, "true or false");
  bool v = false;
  if (!YAML::convert<bool>::decode(node_[key], v)) type_error(key, "true or false");
  return v;
}

ConfigNode ConfigNode::child(const std::string& key) const {
  mark(key);
  LETHE_CHECK(has(key), where(key), ": required section is missing");
  if (!node_[key].IsMap()) type_error(key, "a mapping");
  return ConfigNode(node_[key], state_, full(key));
}

std::string ConfigNode::path(const std::string& key) const {
  const std::string v = require<std::string>(key);
  fs::path p(v);
  if (p.is_absolute()) return p.string();
  return (fs::path(file()).parent_path() / p).lexically_normal().string();
}

std::vector<std::string> ConfigNode::paths(const std::string& key) const {
  mark(key);
  LETHE_CHECK(has(key), where(key), ": required key is missing");
  const YAML::Node n = node_[key];
  if (n.IsScalar()) return {path(key)};
  if (!n.IsSequence() || n.size() == 0) type_error(key, "a path or a non-empty list of paths");
  std::vector<std::string> out;
  for (const auto& e : n) {
    if (!e.IsScalar()) type_error(key, "a list of paths");
    fs::path p(e.Scalar());
    out.push_back(p.is_absolute() ? p.string() : (fs::path(file()).parent_path() / p).lexically_normal().string());
  }
  return out;
}

void ConfigNode::finish() const {
  std::set<std::string> keys;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    const std::string k = it->first.as<std::string>();
    // yaml-cpp keeps the first of two equal keys; a silent choice is worse than an error.
    if (!keys.insert(k).second) LETHE_FAIL(where(k), ": key appears more than once");
    if (!state_->seen.count(full(k))) LETHE_FAIL(where(k), ": unknown key");
  }
}

}  // namespace lethe
