// The key=value options that follow a subcommand's positional arguments (eval, generate).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/model/run_device.h"

namespace lethe {

// args[first..] as (key, value) pairs, in order. An argument without '=' is an error
// naming `cmd` and the argument.
std::vector<std::pair<std::string, std::string>> parse_key_values(const std::vector<std::string>& args, size_t first,
                                                                  const char* cmd);

// The whole of `value` as an integer, or an error naming `cmd` and `key`.
int64_t option_int(const char* cmd, const std::string& key, const std::string& value);

// precision= and device=, taken by every subcommand that runs a model.
struct DeviceOptions {
  std::optional<Precision> precision;  // unset: the command's default
  DeviceChoice device = DeviceChoice::automatic;
};
// True when `key` is one of them (its value parsed into o, errors naming `cmd` and the key).
bool take_device_option(const char* cmd, const std::string& key, const std::string& value, DeviceOptions& o);

}  // namespace lethe
