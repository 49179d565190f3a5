// One redrawn status line with a bar, for terminals. Log lines printed through println()
// clear the bar first, so a terminal shows the step log scrolling with the bar under it;
// when disabled (a pipe or a file), println() just prints and update() does nothing.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <string>

namespace lethe {

// Whether a run draws the bar. LETHE_PROGRESS=1 or 0 decides; unset, empty or "auto"
// leaves it to stdout_is_terminal. The switch exists because a terminal is not proof of a
// person watching: under mpirun every rank's stdout is a pseudo-terminal, even when the
// job's output goes to a log file. Any other value is an error naming the variable.
bool progress_bar_wanted(bool stdout_is_terminal);

// One number printf-style (e.g. "%.4f"), for log and status lines.
std::string fmt(const char* format, double value);

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
