// Vocabulary-parallel cross-entropy, log-probs, KL and Min-K%++ moments against the
// one-rank computations, under mpirun with the vocabulary split over every rank.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/eval/mia.h"
#include "engine/parallel/vocab_parallel.h"
#include "engine/parallel/vocab_sample.h"
#include "kernels/cross_entropy.h"
#include "par_test_util.h"
#include "tests/test_util.h"

namespace lethe {
namespace {

constexpr int64_t N = 12, V = 48;

struct Case {
  Tensor logits, targets, weights;
};

Case make_case(DType dt) {
  Case c;
  c.logits = test::randn({N, V}, dt, 11, 3.0);
  c.targets = test::randint({N}, V, 12);
  c.targets.data<int32_t>()[3] = ops::kIgnoreIndex;
  c.weights = test::randn({N}, DType::f64, 13);  // signed: ascent and descent rows
  return c;
}

VocabShard shard(const Communicator& c) {
  const int64_t Vr = V / c.size();
  return {c.rank() * Vr, Vr, V};
}

class VocabParallel : public ::testing::TestWithParam<DType> {};

TEST_P(VocabParallel, CrossEntropyMatchesOneRank) {
  auto& w = *test::mpi_world_shared();
  const DType dt = GetParam();
  const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
  Case c = make_case(dt);
  Tensor lp_ref = Tensor::empty({N}, dt), lse_ref = Tensor::empty({N}, dt), d_ref = Tensor::empty({N, V}, dt);
  const double loss_ref = ops::cross_entropy_forward(c.logits, c.targets, c.weights, lp_ref, lse_ref);
  ops::cross_entropy_backward(c.logits, c.targets, c.weights, lse_ref, 0.5, d_ref);

  const VocabShard vs = shard(w);
  Tensor mine = test::columns(c.logits, vs.start, vs.size);
  Tensor lp = Tensor::empty({N}, dt), lse = Tensor::empty({N}, dt), d = Tensor::empty({N, vs.size}, dt);
  const double loss = vocab_parallel_cross_entropy_forward(mine, c.targets, c.weights, vs, lp, lse, w);
  vocab_parallel_cross_entropy_backward(mine, c.targets, c.weights, lse, vs, 0.5, d);
  EXPECT_NEAR(loss, loss_ref, tol * std::abs(loss_ref));
  EXPECT_LT(test::scaled_err(lp, lp_ref), tol);
  EXPECT_LT(test::scaled_err(lse, lse_ref), tol);
  EXPECT_LT(test::scaled_err(d, test::columns(d_ref, vs.start, vs.size)), tol);
  EXPECT_EQ(lp.dtype() == DType::f64 ? lp.data<double>()[3] : double(lp.data<float>()[3]), 0.0);
}

TEST_P(VocabParallel, KlAndItsGradientMatchOneRank) {
  auto& w = *test::mpi_world_shared();
  const DType dt = GetParam();
  const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
  Case c = make_case(dt);
  Tensor ref = test::randn({N, V}, dt, 21, 2.0);
  Tensor rw = Tensor::zeros({N}, DType::f64);
  for (int64_t i = 0; i < N; ++i) rw.data<double>()[i] = i == 5 ? 0.0 : 1.0 / double(N - 1);
  // Direct one-rank KL(q || p) and its gradient (p - q) * row weight.
  double kl_ref = 0;
  Tensor g_ref = Tensor::zeros({N, V}, DType::f64);
  const auto L = test::values(c.logits), R = test::values(ref);
  for (int64_t i = 0; i < N; ++i) {
    if (i == 5) continue;
    double mq = -1e300, mp = -1e300, sq = 0, sp = 0;
    for (int64_t j = 0; j < V; ++j) mq = std::max(mq, R[size_t(i * V + j)]), mp = std::max(mp, L[size_t(i * V + j)]);
    for (int64_t j = 0; j < V; ++j) sq += std::exp(R[size_t(i * V + j)] - mq), sp += std::exp(L[size_t(i * V + j)] - mp);
    for (int64_t j = 0; j < V; ++j) {
      const double lq = R[size_t(i * V + j)] - mq - std::log(sq), lpj = L[size_t(i * V + j)] - mp - std::log(sp);
      kl_ref += rw.data<double>()[i] * std::exp(lq) * (lq - lpj);
      g_ref.data<double>()[i * V + j] = rw.data<double>()[i] * (std::exp(lpj) - std::exp(lq));
    }
  }
  const VocabShard vs = shard(w);
  Tensor d = Tensor::empty({N, vs.size}, dt);
  const double kl = vocab_parallel_kl(test::columns(ref, vs.start, vs.size), test::columns(c.logits, vs.start, vs.size),
                                      rw, &d, w);
  EXPECT_NEAR(kl, kl_ref, tol * std::abs(kl_ref));
  EXPECT_LT(test::scaled_err(d, test::columns(g_ref, vs.start, vs.size)), tol);
  EXPECT_GT(kl_ref, 0.1);  // the two distributions really differ
}

TEST_P(VocabParallel, MinKppMomentsMatchEvalMia) {
  auto& w = *test::mpi_world_shared();
  const DType dt = GetParam();
  const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
  Case c = make_case(dt);
  const VocabShard vs = shard(w);
  Tensor mu = Tensor::empty({N}, DType::f64), sigma = Tensor::empty({N}, DType::f64);
  vocab_parallel_logprob_moments(test::columns(c.logits, vs.start, vs.size), mu, sigma, w);
  for (int64_t i = 0; i < N; ++i) {
    double m = 0, s = 0;
    if (dt == DType::f64) logit_moments(c.logits.data<double>() + i * V, V, m, s);
    else logit_moments(c.logits.data<float>() + i * V, V, m, s);
    EXPECT_NEAR(mu.data<double>()[i], m, tol * std::abs(m)) << "row " << i;
    EXPECT_NEAR(sigma.data<double>()[i], s, tol * std::abs(s)) << "row " << i;
  }
}

TEST_P(VocabParallel, ArgmaxExcludingTargetMatchesAScan) {
  auto& w = *test::mpi_world_shared();
  Case c = make_case(GetParam());
  const VocabShard vs = shard(w);
  Tensor out = Tensor::empty({N}, DType::i32);
  vocab_parallel_argmax_excluding(test::columns(c.logits, vs.start, vs.size), c.targets, vs, out, w);
  const auto L = test::values(c.logits);
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = c.targets.data<int32_t>()[i];
    if (t == ops::kIgnoreIndex) {
      EXPECT_EQ(out.data<int32_t>()[i], ops::kIgnoreIndex);
      continue;
    }
    int64_t best = -1;
    for (int64_t j = 0; j < V; ++j)
      if (j != t && (best < 0 || L[size_t(i * V + j)] > L[size_t(i * V + best)])) best = j;
    EXPECT_EQ(out.data<int32_t>()[i], best) << "row " << i;
  }
  vocab_parallel_argmax(test::columns(c.logits, vs.start, vs.size), vs, out, w);
  for (int64_t i = 0; i < N; ++i) {
    int64_t best = 0;
    for (int64_t j = 1; j < V; ++j)
      if (L[size_t(i * V + j)] > L[size_t(i * V + best)]) best = j;
    EXPECT_EQ(out.data<int32_t>()[i], best) << "row " << i;
  }
}

// Reference-drawn labels: each rank holds its columns, and the draw equals sample_row on the
// whole row. With top_k the candidate lists make it exact on any layout (the grid of 1/4
// ties the k-th value often; row 1 ties it 36 ways, past a list of k + 16). The whole
// distribution adds the shards' sums in rank order instead of column order: a draw moves
// only if u falls within about V * 2^-52 of a boundary, about 1e-14 per draw here.
TEST(VocabParallelSample, DrawsWhatTheWholeRowDraws) {
  auto& w = *test::mpi_world_shared();
  Tensor logits = test::randn({N, V}, DType::f32, 21, 2.0);
  float* x = logits.data<float>();
  for (int64_t i = 0; i < N * V; ++i) x[i] = std::round(x[i] * 4) / 4;
  for (int64_t j = 0; j < V; ++j) x[1 * V + j] = j % 4 != 0 ? 3.0f : -1.0f;
  const VocabShard vs = shard(w);
  const Tensor mine = test::columns(logits, vs.start, vs.size);
  const Philox rng(17, 0);
  const SampleFilter filters[] = {{0, 1.0}, {1, 1.0}, {3, 1.0}, {4, 0.7}, {10, 1.0}, {0, 0.6}};
  for (const SampleFilter& f : filters) {
    SCOPED_TRACE(::testing::Message() << "top_k " << f.top_k << " top_p " << f.top_p);
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<double> u(static_cast<size_t>(N));
      for (int64_t i = 0; i < N; ++i) u[size_t(i)] = i == 5 ? -1.0 : rng.uniform(uint64_t(rep * N + i));
      Tensor out = Tensor::empty({N}, DType::i32);
      vocab_parallel_sample(mine, u, f, vs, out, w, "test");
      std::vector<int32_t> idx;
      std::vector<double> e;
      for (int64_t i = 0; i < N; ++i) {
        const auto row = test::values(logits.slice_rows(i, i + 1));
        const int32_t want = i == 5 ? -1 : sample_row(row.data(), V, u[size_t(i)], f, idx, e);
        EXPECT_EQ(out.data<int32_t>()[i], want) << "row " << i;
      }
    }
  }
}

TEST(VocabParallelEmbedding, LookupAndGradientMatchOneRank) {
  auto& w = *test::mpi_world_shared();
  const int64_t C = 5;
  Tensor table = test::randn({V, C}, DType::f32, 31);
  Tensor ids = test::randint({N}, V, 32);
  ids.data<int32_t>()[1] = ids.data<int32_t>()[0];  // a repeated id accumulates
  const VocabShard vs = shard(w);
  Tensor out = Tensor::empty({N, C}, DType::f32);
  vocab_parallel_embedding_forward(ids, table.slice_rows(vs.start, vs.start + vs.size).clone(), vs, out, w);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c)
      EXPECT_EQ(out.data<float>()[i * C + c], table.data<float>()[ids.data<int32_t>()[i] * C + c]);
  Tensor dout = test::randn({N, C}, DType::f32, 33);
  Tensor dt = Tensor::zeros({vs.size, C}, DType::f32);
  vocab_parallel_embedding_backward(ids, dout, vs, dt);
  Tensor full = Tensor::zeros({V, C}, DType::f32);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) full.data<float>()[ids.data<int32_t>()[i] * C + c] += dout.data<float>()[i * C + c];
  EXPECT_EQ(test::scaled_err(dt, full.slice_rows(vs.start, vs.start + vs.size)), 0.0);
  Tensor bad = Tensor::from<int32_t>({1}, {int32_t(V)});
  Tensor o1 = Tensor::empty({1, C}, DType::f32);
  EXPECT_THROW(vocab_parallel_embedding_forward(bad, table.slice_rows(vs.start, vs.start + vs.size).clone(), vs, o1, w),
               Error);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, VocabParallel, ::testing::Values(DType::f32, DType::f64),
                         [](const auto& i) { return std::string(dtype_name(i.param)); });

}  // namespace
}  // namespace lethe
