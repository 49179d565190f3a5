#include "kernels/optim.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {

void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const AdamWArgs& a) {
  if (DeviceOps* d = route("adamw_update", {{"p", &p}, {"g", &g}, {"m", &m}, {"v", &v}}))
    return d->adamw_update(p, g, m, v, a);
  check_cpu(p, "adamw_update", "p");
  check_shape(g, p.shape(), "adamw_update", "g");
  check_shape(m, p.shape(), "adamw_update", "m");
  check_shape(v, p.shape(), "adamw_update", "v");
  LETHE_CHECK(a.step >= 1, "adamw_update: step must be >= 1");
  const double bc1 = 1 - std::pow(a.beta1, double(a.step));
  const double bc2_sqrt = std::sqrt(1 - std::pow(a.beta2, double(a.step)));
  const int64_t n = p.numel();
  cpu::dispatch_float(p.dtype(), "adamw_update", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    scalar_t *P = p.data<scalar_t>(), *M = m.data<scalar_t>(), *Vv = v.data<scalar_t>();
    const scalar_t* G = g.data<scalar_t>();
    const scalar_t decay = scalar_t(1 - a.lr * a.weight_decay), b1 = scalar_t(a.beta1), b2 = scalar_t(a.beta2);
    const scalar_t step = scalar_t(a.lr / bc1), bc2s = scalar_t(bc2_sqrt), eps = scalar_t(a.eps);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      P[i] *= decay;
      M[i] = b1 * M[i] + (scalar_t(1) - b1) * G[i];
      Vv[i] = b2 * Vv[i] + (scalar_t(1) - b2) * G[i] * G[i];
      P[i] -= step * M[i] / (std::sqrt(Vv[i]) / bc2s + eps);
    }
  });
}

void sgd_update(Tensor& p, const Tensor& g, Tensor& buf, const SGDArgs& a) {
  if (DeviceOps* d = route("sgd_update", {{"p", &p}, {"g", &g}, {"buf", &buf}})) return d->sgd_update(p, g, buf, a);
  check_cpu(p, "sgd_update", "p");
  check_shape(g, p.shape(), "sgd_update", "g");
  const bool mom = a.momentum != 0;
  if (mom) check_shape(buf, p.shape(), "sgd_update", "buf");
  const int64_t n = p.numel();
  cpu::dispatch_float(p.dtype(), "sgd_update", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    scalar_t* P = p.data<scalar_t>();
    const scalar_t* G = g.data<scalar_t>();
    scalar_t* B = mom ? buf.data<scalar_t>() : nullptr;
    const scalar_t lr = scalar_t(a.lr), wd = scalar_t(a.weight_decay), mu = scalar_t(a.momentum);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      scalar_t d = G[i] + wd * P[i];
      if (mom) d = B[i] = a.first_step ? d : mu * B[i] + d;
      P[i] -= lr * d;
    }
  });
}

double sum_squares(const Tensor& x) {
  if (DeviceOps* d = route("sum_squares", {{"x", &x}})) return d->sum_squares(x);
  check_cpu(x, "sum_squares", "x");
  const int64_t n = x.numel();
  double total = 0;
  cpu::dispatch_float(x.dtype(), "sum_squares", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* X = x.data<scalar_t>();
    // Fixed-size blocks summed in order: same result for any thread count.
    const int64_t block = 1 << 16, nb = (n + block - 1) / block;
    std::vector<double> part(size_t(nb), 0.0);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; ++b) {
      double s = 0;
      for (int64_t i = b * block, e = std::min(n, (b + 1) * block); i < e; ++i) s += double(X[i]) * X[i];
      part[b] = s;
    }
    for (double s : part) total += s;
  });
  return total;
}

std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) {
  if (xs.empty()) return {};
  for (size_t i = 1; i < xs.size(); ++i)
    LETHE_CHECK(xs[i].device() == xs[0].device(), "sum_squares_each: tensor ", i, " is on ",
                device_name(xs[i].device()), " but tensor 0 is on ", device_name(xs[0].device()),
                "; the tensors must share a device");
  if (DeviceOps* d = route("sum_squares_each", {{"xs[0]", &xs[0]}})) return d->sum_squares_each(xs);
  std::vector<double> out;
  out.reserve(xs.size());
  for (const Tensor& x : xs) out.push_back(sum_squares(x));
  return out;
}

void scale_(Tensor& x, double s) {
  if (DeviceOps* d = route("scale_", {{"x", &x}})) return d->scale_(x, s);
  check_cpu(x, "scale_", "x");
  const int64_t n = x.numel();
  cpu::dispatch_float(x.dtype(), "scale_", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    scalar_t* X = x.data<scalar_t>();
    const scalar_t f = scalar_t(s);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) X[i] *= f;
  });
}

}  // namespace lethe::ops
