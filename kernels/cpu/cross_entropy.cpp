#include "kernels/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/cpu/dispatch.h"
#include "kernels/device_ops.h"

namespace lethe::ops {
namespace {
void check_logits(const Tensor& logits, int64_t first, int64_t vocab, const char* op) {
  check_cpu(logits, op, "logits");
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, V], got ", logits.describe());
  LETHE_CHECK(first >= 0 && first + logits.dim(1) <= vocab, op, ": logits ", logits.describe(), " from id ", first,
              " do not fit the vocabulary of ", vocab);
}
void check_targets(const Tensor& targets, int64_t N, int64_t V, const char* op) {
  check_shape(targets, {N}, op, "targets");
  check_dtype(targets, DType::i32, op, "targets");
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LETHE_CHECK(t[i] == kIgnoreIndex || (t[i] >= 0 && t[i] < V), op, ": target ", t[i], " at position ", i,
                " is outside the vocabulary [0, ", V, ")");
}
void check_args(const Tensor& logits, const Tensor& targets, const Tensor& weights, const char* op,
                int64_t first = 0, int64_t vocab = -1) {
  check_logits(logits, first, vocab < 0 ? (logits.ndim() == 2 ? logits.dim(1) : 0) : vocab, op);
  const int64_t N = logits.dim(0), V = vocab < 0 ? logits.dim(1) : vocab;
  check_targets(targets, N, V, op);
  check_shape(weights, {N}, op, "weights");
  LETHE_CHECK(weights.dtype() == DType::f32 || weights.dtype() == DType::f64, op, ": weights must be f32 or f64, got ",
              weights.describe());
}
std::vector<double> as_double(const Tensor& w) {
  std::vector<double> out(size_t(w.numel()));
  if (w.dtype() == DType::f64) std::copy(w.data<double>(), w.data<double>() + w.numel(), out.begin());
  else std::copy(w.data<float>(), w.data<float>() + w.numel(), out.begin());
  return out;
}
void check_f32_or_f64(const Tensor& t, const char* op, const char* name) {
  LETHE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, op, ": ", name, " must be f32 or f64, got ",
              t.describe());
}
// An accumulator: f64 [1] on the CPU.
void check_loss_scalar(const Tensor& loss, const char* op) {
  check_cpu(loss, op, "loss");
  check_shape(loss, {1}, op, "loss");
  check_dtype(loss, DType::f64, op, "loss");
}
template <typename T>
void put(Tensor& t, int64_t i, T v) {
  if (t.dtype() == DType::f64) t.data<double>()[i] = double(v);
  else t.data<float>()[i] = float(v);
}
// logits[N, Vr], rowmax[N] in the logits' dtype, sumexp[N] f64; returns N.
int64_t check_row_stats(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp, const char* op) {
  check_cpu(logits, op, "logits");
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  const int64_t N = logits.dim(0);
  check_shape(rowmax, {N}, op, "rowmax");
  check_dtype(rowmax, logits.dtype(), op, "rowmax");
  check_shape(sumexp, {N}, op, "sumexp");
  check_dtype(sumexp, DType::f64, op, "sumexp");
  return N;
}
}  // namespace

double cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                             Tensor& lse) {
  if (route("cross_entropy_forward", {{"logits", &logits}, {"targets", &targets}, {"weights", &weights},
                                      {"logprobs", &logprobs}, {"lse", &lse}})) {
    Tensor loss = Tensor::zeros({1}, DType::f64, logits.device());
    cross_entropy_forward(logits, targets, weights, logprobs, lse, loss);
    return loss.to(Device::cpu).data<double>()[0];
  }
  check_args(logits, targets, weights, "cross_entropy_forward");
  const int64_t N = logits.dim(0), V = logits.dim(1);
  check_shape(logprobs, {N}, "cross_entropy_forward", "logprobs");
  check_shape(lse, {N}, "cross_entropy_forward", "lse");
  double loss = 0;
  cpu::dispatch_float(logits.dtype(), "cross_entropy_forward", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* X = logits.data<scalar_t>();
    const int32_t* tg = targets.data<int32_t>();
    const std::vector<double> w = as_double(weights);
    scalar_t *LP = logprobs.data<scalar_t>(), *LSE = lse.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t* x = X + i * V;
      scalar_t m = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t j = 0; j < V; ++j) m = std::max(m, x[j]);
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(x[j] - m));
      LSE[i] = scalar_t(double(m) + std::log(s));
      LP[i] = tg[i] == kIgnoreIndex ? scalar_t(0) : x[tg[i]] - LSE[i];
    }
    // Serial sum: the loss must not depend on the thread count.
    for (int64_t i = 0; i < N; ++i)
      if (tg[i] != kIgnoreIndex) loss -= double(w[i]) * double(LP[i]);
  });
  return loss;
}

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& weights, Tensor& logprobs,
                           Tensor& lse, Tensor& loss) {
  const char* op = "cross_entropy_forward";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"targets", &targets}, {"weights", &weights},
                                {"logprobs", &logprobs}, {"lse", &lse}, {"loss", &loss}}))
    return d->cross_entropy_forward(logits, targets, weights, logprobs, lse, loss);
  check_loss_scalar(loss, op);
  loss.data<double>()[0] += cross_entropy_forward(logits, targets, weights, logprobs, lse);
}

void cross_entropy_shard_finish(const Tensor& rowmax, const Tensor& sumexp, const Tensor& target_logit,
                                const Tensor& targets, const Tensor& weights, Tensor& lse, Tensor& logprobs,
                                Tensor& loss) {
  const char* op = "cross_entropy_shard_finish";
  if (DeviceOps* d = route(op, {{"rowmax", &rowmax}, {"sumexp", &sumexp}, {"target_logit", &target_logit},
                                {"targets", &targets}, {"weights", &weights}, {"lse", &lse}, {"logprobs", &logprobs},
                                {"loss", &loss}}))
    return d->cross_entropy_shard_finish(rowmax, sumexp, target_logit, targets, weights, lse, logprobs, loss);
  check_cpu(rowmax, op, "rowmax");
  LETHE_CHECK(rowmax.ndim() == 1, op, ": expected rowmax[N], got ", rowmax.describe());
  const int64_t N = rowmax.dim(0);
  check_shape(sumexp, {N}, op, "sumexp");
  check_dtype(sumexp, DType::f64, op, "sumexp");
  check_shape(lse, {N}, op, "lse");
  check_f32_or_f64(lse, op, "lse");
  const bool with_targets = targets.defined();
  if (with_targets) {
    check_shape(target_logit, {N}, op, "target_logit");
    check_dtype(target_logit, rowmax.dtype(), op, "target_logit");
    check_shape(targets, {N}, op, "targets");
    check_dtype(targets, DType::i32, op, "targets");
    check_shape(weights, {N}, op, "weights");
    check_f32_or_f64(weights, op, "weights");
    check_shape(logprobs, {N}, op, "logprobs");
    check_f32_or_f64(logprobs, op, "logprobs");
    check_loss_scalar(loss, op);
  } else {
    LETHE_CHECK(!target_logit.defined() && !weights.defined() && !logprobs.defined() && !loss.defined(), op,
                ": target_logit, weights, logprobs and loss come with targets");
  }
  cpu::dispatch_float(rowmax.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* m = rowmax.data<scalar_t>();
    const double* s = sumexp.data<double>();
    const scalar_t* z = with_targets ? target_logit.data<scalar_t>() : nullptr;
    const int32_t* tg = with_targets ? targets.data<int32_t>() : nullptr;
    const std::vector<double> w = with_targets ? as_double(weights) : std::vector<double>();
    double sum = 0;  // serial: independent of the thread count
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t l = scalar_t(double(m[i]) + std::log(s[i]));
      put(lse, i, l);
      if (!with_targets) continue;
      const scalar_t lp = tg[i] == kIgnoreIndex ? scalar_t(0) : scalar_t(z[i] - l);
      put(logprobs, i, lp);
      if (tg[i] != kIgnoreIndex) sum -= w[size_t(i)] * double(lp);
    }
    if (with_targets) loss.data<double>()[0] += sum;
  });
}

void weighted_row_sum(const Tensor& values, const Tensor& weights, Tensor& total) {
  const char* op = "weighted_row_sum";
  if (DeviceOps* d = route(op, {{"values", &values}, {"weights", &weights}, {"total", &total}}))
    return d->weighted_row_sum(values, weights, total);
  check_cpu(values, op, "values");
  LETHE_CHECK(values.ndim() == 1, op, ": expected values[N], got ", values.describe());
  const int64_t N = values.dim(0);
  check_dtype(values, DType::f64, op, "values");
  check_shape(weights, {N}, op, "weights");
  check_dtype(weights, DType::f64, op, "weights");
  check_loss_scalar(total, op);
  const double *v = values.data<double>(), *w = weights.data<double>();
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) sum += w[i] * v[i];
  total.data<double>()[0] += sum;
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                            double dloss, Tensor& dlogits) {
  cross_entropy_backward_shard(logits, targets, weights, lse, 0, logits.ndim() == 2 ? logits.dim(1) : 0, dloss,
                               dlogits);
}

void cross_entropy_backward_shard(const Tensor& logits, const Tensor& targets, const Tensor& weights, const Tensor& lse,
                                  int64_t first, int64_t vocab, double dloss, Tensor& dlogits) {
  const char* op = "cross_entropy_backward";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"targets", &targets}, {"weights", &weights}, {"lse", &lse},
                                {"dlogits", &dlogits}}))
    return d->cross_entropy_backward(logits, targets, weights, lse, first, vocab, dloss, dlogits);
  check_args(logits, targets, weights, op, first, vocab);
  const int64_t N = logits.dim(0), Vr = logits.dim(1);
  check_shape(lse, {N}, op, "lse");
  check_shape(dlogits, {N, Vr}, op, "dlogits");
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = logits.data<scalar_t>(), *LSE = lse.data<scalar_t>();
    const int32_t* tg = targets.data<int32_t>();
    const std::vector<double> w = as_double(weights);
    scalar_t* G = dlogits.data<scalar_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      scalar_t* g = G + i * Vr;
      if (tg[i] == kIgnoreIndex || w[i] == 0.0) {
        for (int64_t j = 0; j < Vr; ++j) g[j] = 0;
        continue;
      }
      const scalar_t a = scalar_t(dloss * double(w[i]));
      const scalar_t* x = X + i * Vr;
      for (int64_t j = 0; j < Vr; ++j) g[j] = a * std::exp(x[j] - LSE[i]);
      const int64_t r = int64_t(tg[i]) - first;
      if (r >= 0 && r < Vr) g[r] -= a;
    }
  });
}

void cross_entropy_shard_max(const Tensor& logits, const Tensor& targets, int64_t first, int64_t vocab, Tensor& rowmax,
                             Tensor& target_logit) {
  const char* op = "cross_entropy_shard_max";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"targets", &targets}, {"rowmax", &rowmax},
                                {"target_logit", &target_logit}}))
    return d->cross_entropy_shard_max(logits, targets, first, vocab, rowmax, target_logit);
  check_logits(logits, first, vocab, op);
  const int64_t N = logits.dim(0), Vr = logits.dim(1);
  LETHE_CHECK(targets.defined() == target_logit.defined(), op, ": targets and target_logit go together");
  check_shape(rowmax, {N}, op, "rowmax");
  check_dtype(rowmax, logits.dtype(), op, "rowmax");
  if (targets.defined()) {
    check_targets(targets, N, vocab, op);
    check_shape(target_logit, {N}, op, "target_logit");
    check_dtype(target_logit, logits.dtype(), op, "target_logit");
  }
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* X = logits.data<scalar_t>();
    scalar_t* M = rowmax.data<scalar_t>();
    const int32_t* tg = targets.defined() ? targets.data<int32_t>() : nullptr;
    scalar_t* Z = tg ? target_logit.data<scalar_t>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t* x = X + i * Vr;
      scalar_t m = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t j = 0; j < Vr; ++j) m = std::max(m, x[j]);
      M[i] = m;
      if (!tg) continue;
      const int64_t r = int64_t(tg[i]) - first;
      Z[i] = (tg[i] != kIgnoreIndex && r >= 0 && r < Vr) ? x[r] : scalar_t(0);
    }
  });
}

void cross_entropy_shard_sumexp(const Tensor& logits, const Tensor& rowmax, Tensor& sumexp, bool difference_in_double) {
  const char* op = "cross_entropy_shard_sumexp";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"rowmax", &rowmax}, {"sumexp", &sumexp}}))
    return d->cross_entropy_shard_sumexp(logits, rowmax, sumexp, difference_in_double);
  const int64_t N = check_row_stats(logits, rowmax, sumexp, op);
  const int64_t Vr = logits.dim(1);
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = logits.data<scalar_t>(), *M = rowmax.data<scalar_t>();
    double* S = sumexp.data<double>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      double acc = 0;
      if (difference_in_double)
        for (int64_t j = 0; j < Vr; ++j) acc += std::exp(double(X[i * Vr + j]) - double(M[i]));
      else
        for (int64_t j = 0; j < Vr; ++j) acc += std::exp(double(X[i * Vr + j] - M[i]));
      S[i] = acc;
    }
  });
}

void softmax_moment_shard(const Tensor& logits, const Tensor& rowmax, const Tensor& sumexp, const Tensor& center,
                          Tensor& out) {
  const char* op = "softmax_moment_shard";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"rowmax", &rowmax}, {"sumexp", &sumexp}, {"center", &center},
                                {"out", &out}}))
    return d->softmax_moment_shard(logits, rowmax, sumexp, center, out);
  const int64_t N = check_row_stats(logits, rowmax, sumexp, op);
  const int64_t Vr = logits.dim(1);
  check_shape(out, {N}, op, "out");
  check_dtype(out, DType::f64, op, "out");
  if (center.defined()) {
    check_shape(center, {N}, op, "center");
    check_dtype(center, DType::f64, op, "center");
  }
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *X = logits.data<scalar_t>(), *M = rowmax.data<scalar_t>();
    const double* S = sumexp.data<double>();
    const double* C = center.defined() ? center.data<double>() : nullptr;
    double* O = out.data<double>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const double m = double(M[i]), s = S[i], lse = m + std::log(s);
      double acc = 0;
      for (int64_t j = 0; j < Vr; ++j) {
        const double x = double(X[i * Vr + j]), p = std::exp(x - m);
        const double l = x - lse;
        acc += C ? p / s * (l - C[i]) * (l - C[i]) : p / s * l;
      }
      O[i] = acc;
    }
  });
}

void argmax_shard(const Tensor& logits, const Tensor& exclude, int64_t first, Tensor& best, Tensor& arg) {
  const char* op = "argmax_shard";
  if (DeviceOps* d = route(op, {{"logits", &logits}, {"exclude", &exclude}, {"best", &best}, {"arg", &arg}}))
    return d->argmax_shard(logits, exclude, first, best, arg);
  check_cpu(logits, op, "logits");
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  const int64_t N = logits.dim(0), Vr = logits.dim(1);
  check_shape(best, {N}, op, "best");
  check_dtype(best, logits.dtype(), op, "best");
  check_shape(arg, {N}, op, "arg");
  check_dtype(arg, DType::i32, op, "arg");
  if (exclude.defined()) {
    check_shape(exclude, {N}, op, "exclude");
    check_dtype(exclude, DType::i32, op, "exclude");
  }
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* X = logits.data<scalar_t>();
    const int32_t* ex = exclude.defined() ? exclude.data<int32_t>() : nullptr;
    scalar_t* B = best.data<scalar_t>();
    int32_t* A = arg.data<int32_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      scalar_t v = -std::numeric_limits<scalar_t>::infinity();
      int64_t a = -1;
      const int64_t skip = ex ? int64_t(ex[i]) - first : -1;
      for (int64_t j = 0; j < Vr; ++j)
        if (j != skip && X[i * Vr + j] > v) v = X[i * Vr + j], a = first + j;
      B[i] = v;
      A[i] = int32_t(a);
    }
  });
}

void kl_shard(const Tensor& ref_logits, const Tensor& logits, const Tensor& lse_q, const Tensor& lse_p,
              const Tensor& row_weight, double grad_scale, Tensor& kl, Tensor* dlogits) {
  const char* op = "kl_shard";
  if (DeviceOps* d = route(op, {{"ref_logits", &ref_logits}, {"logits", &logits}, {"lse_q", &lse_q},
                                {"lse_p", &lse_p}, {"row_weight", &row_weight}, {"kl", &kl}, {"dlogits", dlogits}}))
    return d->kl_shard(ref_logits, logits, lse_q, lse_p, row_weight, grad_scale, kl, dlogits);
  check_cpu(logits, op, "logits");
  LETHE_CHECK(logits.ndim() == 2, op, ": expected logits[N, Vr], got ", logits.describe());
  const int64_t N = logits.dim(0), Vr = logits.dim(1);
  check_shape(ref_logits, {N, Vr}, op, "ref_logits");
  check_dtype(ref_logits, logits.dtype(), op, "ref_logits");
  for (const auto& [t, name] : {std::pair{&lse_q, "lse_q"}, {&lse_p, "lse_p"}, {&row_weight, "row_weight"},
                                {&kl, "kl"}}) {
    check_shape(*t, {N}, op, name);
    check_dtype(*t, DType::f64, op, name);
  }
  if (dlogits) {
    check_shape(*dlogits, {N, Vr}, op, "dlogits");
    check_dtype(*dlogits, logits.dtype(), op, "dlogits");
  }
  cpu::dispatch_float(logits.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t *R = ref_logits.data<scalar_t>(), *X = logits.data<scalar_t>();
    const double *LQ = lse_q.data<double>(), *LP = lse_p.data<double>(), *W = row_weight.data<double>();
    double* K = kl.data<double>();
    scalar_t* G = dlogits ? dlogits->data<scalar_t>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      K[i] = 0;
      if (W[i] == 0.0) {
        if (G) std::fill(G + i * Vr, G + (i + 1) * Vr, scalar_t(0));
        continue;
      }
      const double a = grad_scale * W[i];
      double s = 0;
      for (int64_t j = 0; j < Vr; ++j) {
        const double lq = double(R[i * Vr + j]) - LQ[i], lp = double(X[i * Vr + j]) - LP[i];
        const double q = std::exp(lq), p = std::exp(lp);
        if (q > 0) s += q * (lq - lp);
        if (G) G[i * Vr + j] = scalar_t(a * (p - q));
      }
      K[i] = s;
    }
  });
}

void add_at_targets_(Tensor& x, const Tensor& targets, int64_t first, double value) {
  const char* op = "add_at_targets_";
  if (DeviceOps* d = route(op, {{"x", &x}, {"targets", &targets}})) return d->add_at_targets_(x, targets, first, value);
  check_cpu(x, op, "x");
  LETHE_CHECK(x.ndim() == 2, op, ": expected x[N, Vr], got ", x.describe());
  const int64_t N = x.dim(0), Vr = x.dim(1);
  check_shape(targets, {N}, op, "targets");
  check_dtype(targets, DType::i32, op, "targets");
  const int32_t* t = targets.data<int32_t>();
  cpu::dispatch_float(x.dtype(), op, [&](auto tag_) {
    using scalar_t = decltype(tag_);
    scalar_t* X = x.data<scalar_t>();
    for (int64_t i = 0; i < N; ++i) {
      const int64_t c = int64_t(t[i]) - first;
      if (t[i] != kIgnoreIndex && c >= 0 && c < Vr) X[i * Vr + c] = scalar_t(X[i * Vr + c] + scalar_t(value));
    }
  });
}

}  // namespace lethe::ops
