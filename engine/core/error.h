// Errors carry context (file, key, tensor) so a user can act on them without a debugger.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lethe {

// Any error a user can cause (bad config, bad file, bad shape). The CLI prints what()
// and exits non-zero; nothing catches it silently.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Internal invariant or user-facing check; the message is built only on failure.
#define LETHE_CHECK(cond, ...)                                                  \
  do {                                                                          \
    if (!(cond)) throw ::lethe::Error(::lethe::detail::concat(__VA_ARGS__));    \
  } while (0)

#define LETHE_FAIL(...) throw ::lethe::Error(::lethe::detail::concat(__VA_ARGS__))

}  // namespace lethe
