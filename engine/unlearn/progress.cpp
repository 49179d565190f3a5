#include "engine/unlearn/progress.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ostream>
#include <string>

#include "engine/core/error.h"

namespace lethe {

bool progress_bar_wanted(bool stdout_is_terminal) {
  const char* v = std::getenv("LETHE_PROGRESS");
  const std::string s = v ? v : "";
  if (s.empty() || s == "auto") return stdout_is_terminal;
  if (s == "1") return true;
  if (s == "0") return false;
  LETHE_FAIL("LETHE_PROGRESS must be 0, 1 or auto, got '", s, "'");
}

void ProgressBar::clear() {
  if (drawn_) out_ << "\r\033[K";
  drawn_ = false;
}

void ProgressBar::update(int64_t done, const std::string& text) {
  if (!enabled_) return;
  constexpr int kWidth = 30;
  const double frac = total_ > 0 ? std::clamp(double(done) / double(total_), 0.0, 1.0) : 1.0;
  const int filled = int(frac * kWidth + 0.5);
  clear();
  out_ << '[' << std::string(size_t(filled), '#') << std::string(size_t(kWidth - filled), '.') << "] "
       << int(frac * 100 + 0.5) << "% " << text << std::flush;
  drawn_ = true;
}

void ProgressBar::println(const std::string& line) {
  clear();
  out_ << line << std::endl;
}

void ProgressBar::finish() {
  if (drawn_) out_ << "\r\033[K" << std::flush;
  drawn_ = false;
}

std::string fmt(const char* format, double value) {
  char b[64];
  std::snprintf(b, sizeof b, format, value);
  return b;
}

}  // namespace lethe
