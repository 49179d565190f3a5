#include "engine/parallel/vocab_sample.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cross_entropy.h"
#include "kernels/sample.h"

namespace lethe {
namespace {

// Extra entries each shard lists beyond top_k, so ties at the k-th value are seen whole.
constexpr int64_t kTieSlack = 16;

Tensor on_host(const Tensor& t) { return t.device() == Device::cpu ? t : t.to(Device::cpu); }

// The draw from candidates sorted most likely first (v, id), m of them, as sample_row
// makes it after its sort: probabilities exp(v - v[0]) in that order, cut at top_p.
int32_t draw_sorted(const double* v, const int32_t* id, int64_t m, double u, double top_p, std::vector<double>& e) {
  const double mx = v[0];
  e.resize(size_t(m));
  double z = 0;
  for (int64_t j = 0; j < m; ++j) z += (e[size_t(j)] = std::exp(v[j] - mx));
  if (top_p < 1) {
    double cum = 0, kept = 0;
    int64_t n = 0;
    while (n < m) {
      kept += e[size_t(n)];
      cum += e[size_t(n++)] / z;
      if (cum > top_p) break;
    }
    m = n;
    z = kept;
  }
  double acc = 0;
  for (int64_t j = 0; j < m; ++j)
    if ((acc += e[size_t(j)]) > u * z) return id[j];
  return id[m - 1];
}

void check_finite_row(bool ok, const char* what, int64_t row) {
  LETHE_CHECK(ok, what, ": the logits of row ", row, " are not finite (NaN or infinite); no id can be drawn");
}

// Whole rows of the group's logits on the host, `rows` of them gathered at a time.
template <typename F>
void for_whole_rows(const Tensor& logits, const std::vector<int64_t>& rows, const VocabShard& vs, Communicator& tp,
                    F&& f) {
  const int64_t P = tp.size(), Vr = vs.size, V = vs.vocab;
  const int64_t sub = std::max<int64_t>(1, (int64_t(1) << 20) / Vr);  // about 2^20 logits per rank at a time
  std::vector<double> row(static_cast<size_t>(V));
  for (size_t s0 = 0; s0 < rows.size(); s0 += size_t(sub)) {
    const int64_t R = std::min<int64_t>(sub, int64_t(rows.size() - s0));
    Tensor mine = Tensor::empty({R * Vr}, DType::f64);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = rows[s0 + size_t(r)];
      const Tensor h = on_host(logits.slice_rows(i, i + 1)).to(DType::f64);
      std::copy_n(h.data<double>(), Vr, mine.data<double>() + r * Vr);
    }
    Tensor all = mine;
    if (P > 1) {
      all = Tensor::empty({P * R * Vr}, DType::f64);
      tp.all_gather(mine, all);
    }
    const double* g = all.data<double>();
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t q = 0; q < P; ++q)  // rank q's block holds ids [q Vr, (q + 1) Vr)
        std::copy_n(g + (q * R + r) * Vr, Vr, row.begin() + q * Vr);
      f(rows[s0 + size_t(r)], row.data());
    }
  }
}

void whole_distribution(const Tensor& logits, const std::vector<double>& u, const VocabShard& vs, Tensor& out,
                        Communicator& tp, const char* what) {
  const int64_t N = logits.dim(0), P = tp.size(), me = tp.rank();
  const Device dev = logits.device();
  const DType st = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor mx = Tensor::empty({N}, st, dev), se = Tensor::empty({N}, DType::f64, dev);
  Tensor no_targets, no_target_logit;
  ops::cross_entropy_shard_max(logits, no_targets, 0, logits.dim(1), mx, no_target_logit);
  tp.all_reduce(mx, ReduceOp::max);
  ops::cross_entropy_shard_sumexp(logits, mx, se, true);
  const Tensor hs = on_host(se);
  Tensor all = hs;
  if (P > 1) {
    all = Tensor::empty({P * N}, DType::f64);
    tp.all_gather(hs, all);
  }
  const double* S = all.data<double>();
  // Each row's target t = u Z, Z the sum over shards in rank order; the shard where the
  // running sum passes t scans for it, the others report -1.
  Tensor target = Tensor::empty({N}, DType::f64);
  double* T = target.data<double>();
  for (int64_t i = 0; i < N; ++i) {
    T[i] = -1;
    if (!(u[size_t(i)] >= 0)) continue;
    double z = 0;
    for (int64_t q = 0; q < P; ++q) z += S[q * N + i];
    check_finite_row(std::isfinite(z) && z > 0, what, i);
    const double t = u[size_t(i)] * z;
    double before = 0;
    int64_t q = 0;
    for (; q < P - 1; ++q) {
      if (before + S[q * N + i] > t) break;
      before += S[q * N + i];
    }
    if (q == me) T[i] = t - before;
  }
  Tensor arg = Tensor::empty({N}, DType::i32, dev);
  ops::inverse_cdf_shard(logits, mx, dev == Device::cpu ? target : target.to(dev), vs.start, arg);
  out.copy_from(on_host(arg));
  if (P > 1) tp.all_reduce(out, ReduceOp::max);
}

void from_candidates(const Tensor& logits, const std::vector<double>& u, const SampleFilter& f, const VocabShard& vs,
                     Tensor& out, Communicator& tp, const char* what) {
  const int64_t N = logits.dim(0), P = tp.size(), Vr = vs.size, k = f.top_k;
  const int64_t C = std::min(k + kTieSlack, Vr);
  const Device dev = logits.device();
  const DType st = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor vals = Tensor::empty({N, C}, st, dev), ids = Tensor::empty({N, C}, DType::i32, dev);
  ops::topk_shard(logits, vs.start, vals, ids);
  Tensor hv = on_host(vals).to(DType::f64), hi = on_host(ids);
  Tensor av = hv, ai = hi;
  if (P > 1) {
    av = Tensor::empty({P * N * C}, DType::f64);
    ai = Tensor::empty({P * N * C}, DType::i32);
    tp.all_gather(hv.reshape({N * C}), av);
    tp.all_gather(hi.reshape({N * C}), ai);
  }
  const double* gv = av.data<double>();
  const int32_t* gi = ai.data<int32_t>();
  int32_t* o = out.data<int32_t>();
  std::vector<int64_t> whole;  // rows whose ties at the k-th value overflow a list
  std::vector<int64_t> order;
  std::vector<double> v, e;
  std::vector<int32_t> id;
  for (int64_t i = 0; i < N; ++i) {
    o[i] = -1;
    if (!(u[size_t(i)] >= 0)) continue;
    order.clear();
    for (int64_t q = 0; q < P; ++q)
      for (int64_t c = 0; c < C; ++c) order.push_back((q * N + i) * C + c);
    // The lists hold P (k + 16) entries: one sort serves the k-th value and the draw.
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return gv[a] > gv[b] || (gv[a] == gv[b] && gi[a] < gi[b]); });
    const double first = gv[order[0]], kth = gv[order[size_t(k - 1)]];
    check_finite_row(std::isfinite(first) && std::isfinite(kth), what, i);
    // A shard listed everything at or above the k-th value unless its list is full (it has
    // more columns than it listed) and still at that value where it ends.
    bool complete = true;
    for (int64_t q = 0; q < P; ++q)
      complete = complete && (C == Vr || gv[(q * N + i) * C + C - 1] < kth);
    if (!complete) {
      whole.push_back(i);
      continue;
    }
    v.clear(), id.clear();
    for (int64_t a : order) {
      if (gv[a] < kth) break;
      v.push_back(gv[a]);
      id.push_back(gi[a]);
    }
    o[i] = draw_sorted(v.data(), id.data(), int64_t(v.size()), u[size_t(i)], f.top_p, e);
  }
  std::vector<int32_t> idx;
  for_whole_rows(logits, whole, vs, tp, [&](int64_t i, const double* row) {
    o[i] = sample_row(row, vs.vocab, u[size_t(i)], f, idx, e);
  });
}

}  // namespace

int32_t sample_row(const double* x, int64_t V, double u, const SampleFilter& f, std::vector<int32_t>& idx,
                   std::vector<double>& e) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < V; ++j) mx = std::max(mx, x[j]);
  const int64_t k = f.top_k > 0 && f.top_k < V ? f.top_k : V;
  if (k == V && f.top_p >= 1) {  // the whole distribution, in id order: no sort
    double z = 0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(x[j] - mx);
    double acc = 0;
    for (int64_t j = 0; j < V; ++j)
      if ((acc += std::exp(x[j] - mx)) > u * z) return int32_t(j);
    return int32_t(V - 1);
  }
  idx.resize(size_t(V));
  for (int64_t j = 0; j < V; ++j) idx[size_t(j)] = int32_t(j);
  // Most likely first; ties by id, so the order (and the draw) is the same everywhere.
  auto before = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  int64_t m = V;
  if (k < V) {
    std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), before);
    const double kth = x[idx[size_t(k - 1)]];
    m = std::partition(idx.begin(), idx.end(), [&](int32_t j) { return x[j] >= kth; }) - idx.begin();
  }
  std::sort(idx.begin(), idx.begin() + m, before);
  std::vector<double> v(static_cast<size_t>(m));
  for (int64_t j = 0; j < m; ++j) v[size_t(j)] = x[idx[size_t(j)]];
  return draw_sorted(v.data(), idx.data(), m, u, f.top_p, e);
}

void vocab_parallel_sample(const Tensor& logits, const std::vector<double>& u, const SampleFilter& f,
                           const VocabShard& vs, Tensor& out, Communicator& tp, const char* what) {
  const char* op = "vocab_parallel_sample";
  LETHE_CHECK(logits.ndim() == 2 && logits.dim(1) == vs.size, op, ": logits ", logits.describe(),
              " do not match the shard [", vs.start, ", ", vs.start + vs.size, ") of ", vs.vocab);
  const int64_t N = logits.dim(0);
  LETHE_CHECK(int64_t(u.size()) == N, op, ": ", u.size(), " uniforms for ", N, " rows");
  check_shape(out, {N}, op, "out");
  check_dtype(out, DType::i32, op, "out");
  check_cpu(out, op, "out");
  const int64_t k = f.top_k > 0 && f.top_k < vs.vocab ? f.top_k : vs.vocab;
  if (k == vs.vocab && f.top_p >= 1) return whole_distribution(logits, u, vs, out, tp, what);
  if (k < vs.vocab) return from_candidates(logits, u, f, vs, out, tp, what);
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < N; ++i) {
    out.data<int32_t>()[i] = -1;
    if (u[size_t(i)] >= 0) rows.push_back(i);
  }
  std::vector<int32_t> idx;
  std::vector<double> e;
  for_whole_rows(logits, rows, vs, tp, [&](int64_t i, const double* row) {
    out.data<int32_t>()[i] = sample_row(row, vs.vocab, u[size_t(i)], f, idx, e);
  });
}

}  // namespace lethe
