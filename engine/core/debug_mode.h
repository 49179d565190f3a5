// LETHE_DEBUG=1 (set by `launch/lethe-run.sh --debug`) turns on the engine's checks that
// cost too much for a production run: every CUDA launch is synchronised and checked, and
// the model checks each op's output and gradient for NaN / Inf (numerics_guard.h).
// Header-only so that the CUDA library, which links no other lethe library, reads the
// same switch.
#pragma once
#include <cstdlib>
#include <cstring>

namespace lethe {

inline bool& debug_mode_flag() {
  static bool on = [] {
    const char* e = std::getenv("LETHE_DEBUG");
    return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0;
  }();
  return on;
}

inline bool debug_mode() { return debug_mode_flag(); }

// For tests, which exercise both modes in one process.
inline void set_debug_mode(bool on) { debug_mode_flag() = on; }

}  // namespace lethe
