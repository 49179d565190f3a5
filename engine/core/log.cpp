#include "engine/core/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace lethe::log {
namespace {
std::atomic<Level> g_level{Level::info};
std::mutex g_mutex;
const char* tag(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "?";
}
}  // namespace

void set_level(Level l) { g_level = l; }
Level level() { return g_level; }

void write(Level l, const std::string& msg) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "[lethe %s] %s\n", tag(l), msg.c_str());
}

}  // namespace lethe::log
