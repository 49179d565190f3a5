// Cached decoding (LlamaModel::decode_prefill / decode_step, ops::attention_decode): each
// new position's logits equal the last row of a full forward over the whole context.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/model/llama.h"
#include "kernels/attention.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

LlamaConfig config(bool tied) {
  LlamaConfig c;
  c.name = tied ? "decode-tied" : "decode-gqa";
  c.vocab_size = 41;
  c.dim = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = tied ? 4 : 2;
  c.ffn_dim = 48;
  c.max_seq_len = 80;  // more than one attention key tile (64) of cached positions
  c.tie_embeddings = tied;
  c.init_std = 0.3;
  return c;
}

// The full forward's logits of each sequence's last position, [B, V].
Tensor last_rows(LlamaModel& m, const std::vector<std::vector<int32_t>>& ctx) {
  const int64_t B = int64_t(ctx.size()), T = int64_t(ctx[0].size()), V = m.config().vocab_size;
  Tensor tok = Tensor::empty({B, T}, DType::i32);
  for (int64_t b = 0; b < B; ++b) std::copy(ctx[size_t(b)].begin(), ctx[size_t(b)].end(), tok.data<int32_t>() + b * T);
  const Tensor& lg = m.forward_logits(tok);
  Tensor out = Tensor::empty({B, V}, lg.dtype());
  for (int64_t b = 0; b < B; ++b) out.slice_rows(b, b + 1).copy_from(lg.slice_rows(b * T + T - 1, b * T + T));
  return out;
}

// f64: the cached position runs the same ops as a row of the full forward, with matrix
// products of one row instead of T; only the summation order inside the BLAS may differ,
// so the logits agree to rounding of the f64 sums: 1e-12 of their scale.
TEST(Decode, EveryCachedStepMatchesTheFullForward) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "gqa");
    const LlamaConfig c = config(tied);
    LlamaModel m(c, DType::f64);
    m.init_weights(21);
    const int64_t B = 2, T0 = 6;
    std::vector<std::vector<int32_t>> ctx(B);
    const Tensor prefix = randint({B, T0}, c.vocab_size, 22);
    for (int64_t b = 0; b < B; ++b)
      ctx[size_t(b)].assign(prefix.data<int32_t>() + b * T0, prefix.data<int32_t>() + (b + 1) * T0);
    Tensor logits = Tensor::empty({B, c.vocab_size}, DType::f64);
    m.decode_prefill(prefix, logits);
    EXPECT_LE(scaled_err(logits, last_rows(m, ctx)), 1e-12) << "prefill";
    const Tensor steps = randint({70, B}, c.vocab_size, 23);  // past one 64-key tile
    for (int64_t s = 0; s < steps.dim(0); ++s) {
      // decode_step first: last_rows' forward would reset nothing the cache holds, but the
      // step must not depend on a forward having run in between.
      const Tensor next = steps.slice_rows(s, s + 1).reshape({B}).clone();
      m.decode_step(next, logits);
      for (int64_t b = 0; b < B; ++b) ctx[size_t(b)].push_back(next.data<int32_t>()[b]);
      const Tensor cached = logits.clone();
      ASSERT_LE(scaled_err(cached, last_rows(m, ctx)), 1e-12) << "step " << s;
      EXPECT_EQ(m.decode_length(), T0 + s + 1);
    }
  }
}

// attention_decode against attention_forward's last row, f64 (same bound as above).
TEST(Decode, AttentionDecodeIsTheLastRowOfTheForward) {
  const int64_t B = 2, T = 70, H = 4, KV = 2, D = 8;
  const Tensor q = randn({B, T, H, D}, DType::f64, 1), k = randn({B, T, KV, D}, DType::f64, 2),
               v = randn({B, T, KV, D}, DType::f64, 3);
  Tensor o = Tensor::empty({B, T, H, D}, DType::f64), lse = Tensor::empty({B, H, T}, DType::f64);
  ops::attention_forward(q, k, v, 0.35, o, lse);
  Tensor cache_k = Tensor::zeros({B, T + 5, KV, D}, DType::f64), cache_v = Tensor::zeros({B, T + 5, KV, D}, DType::f64);
  for (int64_t b = 0; b < B; ++b) {
    cache_k.view(b * (T + 5) * KV * D, {T * KV * D}).copy_from(k.view(b * T * KV * D, {T * KV * D}));
    cache_v.view(b * (T + 5) * KV * D, {T * KV * D}).copy_from(v.view(b * T * KV * D, {T * KV * D}));
  }
  Tensor q1 = Tensor::empty({B, 1, H, D}, DType::f64), o1 = Tensor::empty({B, 1, H, D}, DType::f64),
         want = Tensor::empty({B, 1, H, D}, DType::f64);
  for (int64_t b = 0; b < B; ++b) {
    q1.view(b * H * D, {H * D}).copy_from(q.view((b * T + T - 1) * H * D, {H * D}));
    want.view(b * H * D, {H * D}).copy_from(o.view((b * T + T - 1) * H * D, {H * D}));
  }
  ops::attention_decode(q1, cache_k, cache_v, T, 0.35, o1);
  EXPECT_LE(scaled_err(o1, want), 1e-12);
}

TEST(Decode, MisuseIsAClearError) {
  const LlamaConfig c = config(false);
  LlamaModel m(c);
  m.init_weights(1);
  Tensor logits = Tensor::empty({1, c.vocab_size}, DType::f32);
  const Tensor one = Tensor::from<int32_t>({1}, {3});
  EXPECT_THROW(m.decode_step(one, logits), Error);  // before a prefill
  const Tensor full = randint({1, c.max_seq_len}, c.vocab_size, 4);
  m.decode_prefill(full, logits);
  try {
    m.decode_step(one, logits);
    FAIL() << "a step past max_seq_len was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_seq_len"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lethe
