// Minimal leveled logging to stderr; stdout is reserved for a command's results.
#pragma once
#include <string>

#include "engine/core/error.h"

namespace lethe::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };

void set_level(Level level);
Level level();
void write(Level level, const std::string& msg);

template <typename... Args>
void info(Args&&... args) {
  if (level() <= Level::info) write(Level::info, detail::concat(std::forward<Args>(args)...));
}
template <typename... Args>
void warn(Args&&... args) {
  if (level() <= Level::warn) write(Level::warn, detail::concat(std::forward<Args>(args)...));
}
template <typename... Args>
void debug(Args&&... args) {
  if (level() <= Level::debug) write(Level::debug, detail::concat(std::forward<Args>(args)...));
}
template <typename... Args>
void error(Args&&... args) {
  write(Level::error, detail::concat(std::forward<Args>(args)...));
}

}  // namespace lethe::log
