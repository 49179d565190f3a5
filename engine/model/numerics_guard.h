// Locates the first NaN / Inf of a step. In debug mode (LETHE_DEBUG=1, debug_mode.h) the
// model checks every op's output in the forward and every gradient in the backward, in
// the order they are computed, so the first check that fails names the op where the
// non-finite value appeared: its layer, pass and tensor. A parameter that is already
// non-finite (loaded that way, or written by an update) is named by the scan of the
// parameters that precedes each forward. Off by default: a scan per op costs a pass over every activation.
//
// On GPU, bf16 has f32's exponent range, so lethe needs no loss scaling there; overflow
// checks are what applies (kernels/cuda/numerics.h scans a device buffer the same way).
#pragma once
#include <cstdint>
#include <string>

#include "engine/core/error.h"
#include "engine/core/tensor.h"

namespace lethe {

class ParamSet;

// A NaN / Inf found by the guard. The message says where; the trainers stop the run
// before any update, checkpoint or export.
class NumericsError : public Error {
 public:
  explicit NumericsError(const std::string& msg) : Error(msg) {}
};

// Non-finite entries of a CPU tensor (f32, f64, bf16 or f16): how many, the first one's
// flat index (-1 if none) and its value.
struct NonFinite {
  int64_t count = 0;
  int64_t first = -1;
  double value = 0;
};
NonFinite scan_nonfinite(const Tensor& t);

// "[5, 17]": the multi-index of flat index i in shape s.
std::string index_str(const Shape& s, int64_t i);

class NumericsGuard {
 public:
  // Where a tensor was computed: the pass ("forward", "backward"), the layer (-1: outside
  // the decoder layers) and what the tensor is ("mlp.down_proj output"). `origin` is set
  // for the tensor a pass starts from (the loss gradient), which no op of the model made.
  struct Site {
    const char* pass;
    int64_t layer;
    const char* tensor;
    const char* origin = nullptr;
  };
  NumericsGuard();  // enabled when debug_mode() is on
  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }
  // Prefix of every finding, e.g. "step 12, term forget_ga"; set by the training loops.
  void set_context(std::string context) { context_ = std::move(context); }
  const std::string& context() const { return context_; }

  // Throws NumericsError if `t` holds a NaN or Inf: the op at `site` produced it. The
  // model scans its parameters before each forward (check_params), so by the time an op
  // output is checked, everything it was computed from is known to be finite.
  void check(const Tensor& t, const Site& site) const {
    if (enabled_) check_now(t, site);
  }
  // Throws naming the first parameter of `set` that holds a NaN or Inf; `when` says when
  // the scan ran ("before the forward", "after the update").
  void check_params(const ParamSet& set, const char* kind, const char* when) const {
    if (enabled_) check_params_now(set, kind, when);
  }

 private:
  void check_now(const Tensor& t, const Site& site) const;
  void check_params_now(const ParamSet& set, const char* kind, const char* when) const;
  std::string prefix() const;

  bool enabled_;
  std::string context_;
};

}  // namespace lethe
