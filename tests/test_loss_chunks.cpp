// The loss path in chunks of logits rows (LlamaModel::set_loss_chunk_rows): the same loss,
// log-probs and gradients as the whole [N, V] logits, whatever the chunking.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "engine/core/bf16.h"
#include "engine/model/llama.h"
#include "engine/model/parallel_terms.h"
#include "kernels/cross_entropy.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

LlamaConfig config(bool tied) {
  LlamaConfig c;
  c.name = tied ? "chunks-tied" : "chunks-gqa";
  c.vocab_size = 37;
  c.dim = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = tied ? 4 : 2;
  c.ffn_dim = 24;
  c.max_seq_len = 16;
  c.tie_embeddings = tied;
  c.init_std = 0.3;  // large weights: logits far from uniform, so every row matters
  return c;
}

constexpr int64_t B = 2, T = 7, N = B * T;

struct Batch {
  Tensor tok, tgt, w;
};

Batch batch(const LlamaConfig& c) {
  Batch b{randint({B, T}, c.vocab_size, 5), randint({B, T}, c.vocab_size, 6), Tensor::empty({B, T}, DType::f64)};
  b.tgt.data<int32_t>()[1] = ops::kIgnoreIndex;
  b.tgt.data<int32_t>()[9] = ops::kIgnoreIndex;
  // Signed weights, as GA + GD gives them: the first sequence descends, the second ascends.
  for (int64_t i = 0; i < N; ++i) b.w.data<double>()[i] = (i < T ? 1.0 : -0.5) / double(N);
  return b;
}

struct Result {
  double loss = 0;
  Tensor logprobs;
  std::vector<Tensor> grads;
};

// rows 0: the whole logits kept (one chunk of N rows).
Result run(LlamaModel& m, const Batch& b, int64_t rows) {
  m.set_keep_logits(rows == 0);
  m.set_loss_chunk_rows(rows);
  m.grads().zero();
  Result r;
  r.loss = m.forward(b.tok, b.tgt, &b.w);
  m.backward(0.7);
  r.logprobs = m.logprobs().clone();
  for (size_t i = 0; i < m.grads().size(); ++i) r.grads.push_back(m.grads()[i].clone());
  return r;
}

// f64: chunking changes only the order of sums (the loss over chunks, each lm_head weight
// gradient entry over N rows in chunk groups), so every value agrees to a few ulps of its
// scale: N = 14 terms give at most 14 * 2^-53 ~ 2e-15 relative; 1e-13 leaves room for the
// BLAS's own blocking, which may differ with the row count.
TEST(LossChunks, EveryChunkingGivesTheWholeLogitsResult) {
  for (bool tied : {false, true}) {
    const LlamaConfig c = config(tied);
    LlamaModel m(c, DType::f64);
    m.init_weights(3);
    const Batch b = batch(c);
    const Result whole = run(m, b, 0);
    for (int64_t rows : {int64_t(1), int64_t(3), int64_t(5), N - 1, N, 4 * N}) {
      SCOPED_TRACE(::testing::Message() << (tied ? "tied" : "untied") << " rows=" << rows);
      const Result r = run(m, b, rows);
      EXPECT_NEAR(r.loss, whole.loss, 1e-13 * std::abs(whole.loss));
      EXPECT_LE(scaled_err(r.logprobs, whole.logprobs), 1e-13);
      for (size_t i = 0; i < r.grads.size(); ++i)
        EXPECT_LE(scaled_err(r.grads[i], whole.grads[i]), 1e-13) << m.params().spec(i).name;
    }
  }
}

// The backward reuses the logits the forward computed last, and recomputes the rest; a
// chunk size changed between the two (or a second backward) must not reuse stale rows.
TEST(LossChunks, BackwardReusesOnlyLogitsThatMatchItsChunks) {
  const LlamaConfig c = config(false);
  LlamaModel m(c, DType::f64);
  m.init_weights(12);
  const Batch b = batch(c);
  const Result whole = run(m, b, 0);
  for (auto [fwd_rows, bwd_rows] : {std::pair<int64_t, int64_t>{3, 5}, {5, 3}, {4, 2 * N}, {2 * N, 4}}) {
    SCOPED_TRACE(::testing::Message() << "forward rows " << fwd_rows << ", backward rows " << bwd_rows);
    m.set_keep_logits(false);
    m.set_loss_chunk_rows(fwd_rows);
    m.grads().zero();
    m.forward(b.tok, b.tgt, &b.w);
    m.set_loss_chunk_rows(bwd_rows);
    m.backward(0.35);
    m.backward(0.35);  // twice half the weight: the second pass starts from other held rows
    for (size_t i = 0; i < whole.grads.size(); ++i)
      EXPECT_LE(scaled_err(m.grads()[i], whole.grads[i]), 1e-13) << m.params().spec(i).name;
  }
}

// The visitor sees every row once, in order, as forward_logits computes it.
TEST(LossChunks, VisitorSeesEveryRowOnceAsForwardLogits) {
  const LlamaConfig c = config(false);
  LlamaModel m(c, DType::f64);
  m.init_weights(4);
  const Batch b = batch(c);
  const Tensor want = m.forward_logits(b.tok).clone();
  m.set_loss_chunk_rows(4);
  int64_t next = 0;
  int calls = 0;
  m.forward(b.tok, b.tgt, &b.w, [&](int64_t r0, const Tensor& lg) {
    EXPECT_EQ(r0, next);
    EXPECT_LE(lg.dim(0), 4);
    EXPECT_EQ(lg.dim(1), c.vocab_size);
    EXPECT_LE(scaled_err(lg, want.slice_rows(r0, r0 + lg.dim(0))), 1e-13) << "rows from " << r0;
    next = r0 + lg.dim(0);
    ++calls;
  });
  EXPECT_EQ(next, N);
  EXPECT_EQ(calls, 4);  // 4 + 4 + 4 + 2 rows
}

// backward(dloss, &w) after a forward with other weights is the backward of a forward with
// w: the same chunks through the same code, so the gradients are identical bit for bit.
TEST(LossChunks, BackwardWithNewWeightsEqualsAForwardWithThem) {
  const LlamaConfig c = config(false);
  LlamaModel m(c, DType::f32);
  m.init_weights(5);
  m.set_loss_chunk_rows(3);
  const Batch b = batch(c);
  const Result direct = run(m, b, 3);
  m.grads().zero();
  const Tensor none = Tensor::zeros({B, T}, DType::f64);
  EXPECT_EQ(m.forward(b.tok, b.tgt, &none), 0.0);
  m.backward(0.7, &b.w);
  for (size_t i = 0; i < direct.grads.size(); ++i)
    EXPECT_EQ(scaled_err(m.grads()[i], direct.grads[i]), 0.0) << m.params().spec(i).name;
  EXPECT_EQ(scaled_err(m.logprobs(), direct.logprobs), 0.0);
}

// Without keep_logits the loss path holds no [N, V] logits, and logits() says so.
TEST(LossChunks, LogitsAreRefusedWhenTheLossPathKeptNone) {
  const LlamaConfig c = config(true);
  LlamaModel m(c, DType::f32);
  m.init_weights(6);
  const Batch b = batch(c);
  m.forward(b.tok, b.tgt);
  try {
    (void)m.logits();
    FAIL() << "logits() returned after a chunked forward";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("set_keep_logits"), std::string::npos) << e.what();
  }
  m.forward_logits(b.tok);
  EXPECT_EQ(m.logits().dim(0), N);
  m.set_keep_logits(true);
  m.forward(b.tok, b.tgt);
  EXPECT_EQ(m.logits().dim(1), c.vocab_size);
}

// Under the bf16 policy each chunk's logits are rounded to bf16 as the whole logits are.
// The f32 products of a row may differ in their last bit between a chunk and the whole
// (the BLAS may block by row count), which can move a logit by one bf16 ulp,
// 2^-8 |z|. The mean NLL moves by at most twice the largest logit change (d logp / dz has
// an l1 norm of at most 2), so |loss - whole| <= 2 * 2^-8 * max|z| bounds it; chunked and
// whole runs on this model are usually identical.
TEST(LossChunks, Bf16ChunksRoundAsTheWholeLogits) {
  const LlamaConfig c = config(false);
  LlamaModel m(c, Precision::bf16);
  m.init_weights(7);
  const Batch b = batch(c);
  m.set_keep_logits(true);
  const double whole = m.forward(b.tok, b.tgt);
  const std::vector<double> z = values(m.logits());
  double zmax = 0;
  for (double v : z) zmax = std::max(zmax, std::abs(v));
  m.set_keep_logits(false);
  for (int64_t rows : {int64_t(1), int64_t(5)}) {
    m.set_loss_chunk_rows(rows);
    int64_t not_bf16 = 0;
    const double loss = m.forward(b.tok, b.tgt, nullptr, [&](int64_t, const Tensor& lg) {
      for (double v : values(lg)) not_bf16 += !is_bf16_value(float(v));
    });
    EXPECT_EQ(not_bf16, 0) << "rows=" << rows;
    EXPECT_NEAR(loss, whole, 2 * std::ldexp(1.0, -8) * zmax) << "rows=" << rows;
  }
}


// kl_to_reference runs both models' heads in chunks; against KL(p_ref || p) written out from
// the two models' whole logits (f64): the value and, through backward_logits, the gradient.
// Only the order of sums differs (chunks of 3 rows): 1e-12 of the scale.
TEST(LossChunks, KlToAReferenceInChunksMatchesTheWholeLogits) {
  const LlamaConfig c = config(false);
  LlamaModel m(c, DType::f64), ref(c, DType::f64);
  m.init_weights(8);
  ref.init_weights(9);
  const Batch b = batch(c);
  const double scale = 0.6;
  m.set_loss_chunk_rows(3);
  m.grads().zero();
  const double kl = kl_to_reference(m, ref, b.tok, b.tgt, scale, true);
  std::vector<Tensor> chunked;
  for (size_t i = 0; i < m.grads().size(); ++i) chunked.push_back(m.grads()[i].clone());

  const Tensor q = ref.forward_logits(b.tok).clone(), z = m.forward_logits(b.tok).clone();
  const int64_t V = c.vocab_size;
  int64_t n = 0;
  for (int64_t i = 0; i < N; ++i) n += b.tgt.data<int32_t>()[i] != ops::kIgnoreIndex;
  Tensor dl = Tensor::zeros({N, V}, DType::f64);
  double want = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (b.tgt.data<int32_t>()[i] == ops::kIgnoreIndex) continue;
    auto softmax = [&](const Tensor& x) {
      std::vector<double> p(static_cast<size_t>(V));
      double mx = -1e300, s = 0;
      for (int64_t j = 0; j < V; ++j) mx = std::max(mx, x.data<double>()[i * V + j]);
      for (int64_t j = 0; j < V; ++j) s += p[size_t(j)] = std::exp(x.data<double>()[i * V + j] - mx);
      for (double& v : p) v /= s;
      return p;
    };
    const std::vector<double> pq = softmax(q), pz = softmax(z);
    for (int64_t j = 0; j < V; ++j) {
      want += pq[size_t(j)] * std::log(pq[size_t(j)] / pz[size_t(j)]) / double(n);
      dl.data<double>()[i * V + j] = scale * (pz[size_t(j)] - pq[size_t(j)]) / double(n);
    }
  }
  EXPECT_NEAR(kl, want, 1e-12 * want);
  m.grads().zero();
  m.backward_logits(dl);
  for (size_t i = 0; i < chunked.size(); ++i)
    EXPECT_LE(scaled_err(chunked[i], m.grads()[i]), 1e-12) << m.params().spec(i).name;
}

// The adversarial labels from the reference's head in chunks: at each real position the
// most likely id other than the target, as a scan of the whole logits row finds it.
TEST(LossChunks, AdversarialLabelsInChunksMatchTheWholeLogits) {
  const LlamaConfig c = config(true);
  LlamaModel ref(c, DType::f32);
  ref.init_weights(10);
  ref.set_loss_chunk_rows(4);
  const Batch b = batch(c);
  const Tensor labels = adversarial_targets(ref, b.tok, b.tgt);
  const Tensor z = ref.forward_logits(b.tok).clone();
  const int64_t V = c.vocab_size;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t y = b.tgt.data<int32_t>()[i];
    if (y == ops::kIgnoreIndex) {
      EXPECT_EQ(labels.data<int32_t>()[i], ops::kIgnoreIndex);
      continue;
    }
    int32_t best = -1;
    for (int64_t j = 0; j < V; ++j)
      if (j != y && (best < 0 || z.data<float>()[i * V + j] > z.data<float>()[i * V + best])) best = int32_t(j);
    EXPECT_EQ(labels.data<int32_t>()[i], best) << "row " << i;
  }
}

}  // namespace
}  // namespace lethe
