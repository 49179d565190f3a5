#include "engine/model/numerics_guard.h"

#include <cmath>
#include <sstream>

#include "engine/core/debug_mode.h"
#include "engine/model/param_set.h"
#include "kernels/numerics.h"

namespace lethe {

namespace {
const char* kind_of(double v) { return std::isnan(v) ? "nan" : (v > 0 ? "+inf" : "-inf"); }

std::string describe_hit(const Tensor& t, const NonFinite& r) {
  std::ostringstream os;
  os << "first " << kind_of(r.value) << " at " << index_str(t.shape(), r.first) << " (" << r.count << " of "
     << t.numel() << " entries non-finite)";
  return os.str();
}
}  // namespace

NonFinite scan_nonfinite(const Tensor& t) {
  // On a device the scan runs there (ops::find_nonfinite); only the first bad value is
  // copied back, to name it.
  const ops::NonFiniteScan s = ops::find_nonfinite(t);
  NonFinite r;
  r.count = s.count;
  r.first = s.first;
  if (s.count) {
    const Tensor one = to_host(t.reshape({t.numel()}).view(s.first, {1}));
    r.value = one.dtype() == DType::f64 ? one.data<double>()[0] : double(one.to(DType::f32).data<float>()[0]);
  }
  return r;
}

std::string index_str(const Shape& s, int64_t i) {
  std::vector<int64_t> idx(s.size(), 0);
  for (size_t d = s.size(); d-- > 0;) {
    idx[d] = s[d] > 0 ? i % s[d] : 0;
    i = s[d] > 0 ? i / s[d] : 0;
  }
  std::ostringstream os;
  os << "[";
  for (size_t d = 0; d < idx.size(); ++d) os << (d ? ", " : "") << idx[d];
  os << "]";
  return os.str();
}

NumericsGuard::NumericsGuard() : enabled_(debug_mode()) {}

std::string NumericsGuard::prefix() const {
  return "non-finite value" + (context_.empty() ? std::string() : " at " + context_) + ": ";
}

void NumericsGuard::check_now(const Tensor& t, const Site& site) const {
  const NonFinite r = scan_nonfinite(t);
  if (r.count == 0) return;
  std::ostringstream os;
  os << prefix() << (site.layer >= 0 ? "layer " + std::to_string(site.layer) + " " : "") << site.pass << ", " << site.tensor
     << " " << shape_str(t.shape()) << ": " << describe_hit(t, r)
     << "; " << (site.origin ? site.origin : "everything it was computed from is finite, so this op produced it")
     << (std::isinf(r.value) && !site.origin ? " (overflow)" : "");
  throw NumericsError(os.str());
}

void NumericsGuard::check_params_now(const ParamSet& set, const char* kind, const char* when) const {
  for (size_t i = 0; i < set.size(); ++i) {
    const NonFinite r = scan_nonfinite(set[i]);
    if (r.count == 0) continue;
    throw NumericsError(prefix() + kind + " " + set.spec(i).name + " " + shape_str(set[i].shape()) + " holds " +
                        describe_hit(set[i], r) + " " + when);
  }
}

}  // namespace lethe
