// One redrawn status line with a bar, for terminals. Log lines printed through println()
// clear the bar first, so a terminal shows the step log scrolling with the bar under it;
// when disabled (a pipe or a file), println() just prints and update() does nothing.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <string>

namespace lethe {

class ProgressBar {
 public:
  ProgressBar(std::ostream& out, int64_t total, bool enabled) : out_(out), total_(total), enabled_(enabled) {}
  ~ProgressBar() { finish(); }
  void update(int64_t done, const std::string& text);
  void println(const std::string& line);
  void finish();  // leaves the cursor on a fresh line

 private:
  void clear();
  std::ostream& out_;
  int64_t total_;
  bool enabled_, drawn_ = false;
};

}  // namespace lethe
