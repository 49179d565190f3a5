#include "engine/unlearn/progress.h"

#include <algorithm>
#include <ostream>

namespace lethe {

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

}  // namespace lethe
