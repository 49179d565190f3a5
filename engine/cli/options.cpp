#include "engine/cli/options.h"

#include <exception>

#include "engine/core/error.h"

namespace lethe {

std::vector<std::pair<std::string, std::string>> parse_key_values(const std::vector<std::string>& args, size_t first,
                                                                  const char* cmd) {
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = first; i < args.size(); ++i) {
    const std::string& a = args[i];
    const size_t eq = a.find('=');
    LETHE_CHECK(eq != std::string::npos, cmd, ": unexpected argument '", a, "' (options are key=value)");
    out.emplace_back(a.substr(0, eq), a.substr(eq + 1));
  }
  return out;
}

bool take_device_option(const char* cmd, const std::string& key, const std::string& value, DeviceOptions& o) {
  if (key == "precision") o.precision = parse_precision(value, std::string(cmd) + ": precision");
  else if (key == "device") o.device = parse_device_choice(value, std::string(cmd) + ": device");
  else return false;
  return true;
}

int64_t option_int(const char* cmd, const std::string& key, const std::string& value) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LETHE_CHECK(!value.empty() && used == value.size(), cmd, ": option '", key, "' needs an integer, got '", value, "'");
  return x;
}

}  // namespace lethe
