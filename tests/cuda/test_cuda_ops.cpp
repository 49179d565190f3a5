// Every CUDA op against the CPU reference (kernels/cpu, fp32) on fresh random inputs that
// are rounded to bf16 first, so both sides see the same values. Outputs are poisoned with
// NaN bytes before each run; NaN never passes. Tolerances are the scaled max error
// max|gpu - ref| / max|ref|:
//   exact            0       copies, casts, embedding lookup
//   fp32 outputs     1e-4    elementwise fp32 math and fp32 statistics (lse, rstd, moments)
//   fp32 sums        1e-3    fp32 sums over many rows (dw of rmsnorm / linear; AdamW and SGD: exact)
//   bf16 outputs     1e-2    one bf16 rounding (2^-9 relative) plus fp32 math
//   attention        2e-2 (forward), 3e-2 (backward): P and dS are rounded to bf16 before
//                    their tensor-core products, as in FlashAttention
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "engine/core/debug_mode.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda/arena.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/cast.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/hidden_loss.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/optim.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sample.h"
#include "kernels/cuda/swiglu.h"
#include "kernels/embedding.h"
#include "kernels/hidden_loss.h"
#include "kernels/linear.h"
#include "kernels/optim.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/sample.h"
#include "kernels/swiglu.h"
#include "tests/cuda/cuda_test_util.h"

namespace lethe {
namespace {
using namespace lethe::cudatest;
constexpr double kF32Tol = 1e-4, kSumTol = 1e-3, kBf16Tol = 1e-2, kAttnFwdTol = 2e-2, kAttnBwdTol = 3e-2;

Tensor host(const Shape& s, const std::vector<float>& v) { return Tensor::from<float>(s, v); }
std::vector<float> vec(const Tensor& t) { return std::vector<float>(t.data<float>(), t.data<float>() + t.numel()); }

class CudaOps : public GpuTest {};

// ---- casts -------------------------------------------------------------------------
TEST_F(CudaOps, CastsRoundToNearestEvenLikeTheHost) {
  SCOPED_TRACE(seed_msg());
  const size_t n = 100003;
  auto x = randn(n, 3.f);
  x[0] = 0.f, x[1] = -0.f, x[2] = 1e-40f, x[3] = 3.4e38f, x[4] = INFINITY;
  DeviceBuffer<float> d32(x), back(n);
  DeviceBuffer<bf16> d16(n);
  cuda::cast_f32_to_bf16(d32.get(), d16.get(), int64_t(n));
  cuda::cast_bf16_to_f32(d16.get(), back.get(), int64_t(n));
  const auto b = d16.download();
  const auto f = back.download();
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(b[i].bits, float_to_bf16(x[i]).bits) << "at " << i << " x=" << x[i];
    const float r = bf16_to_float(float_to_bf16(x[i]));
    ASSERT_TRUE(f[i] == r || (std::isnan(f[i]) && std::isnan(r))) << i;
  }
}

// ---- embedding ---------------------------------------------------------------------
TEST_F(CudaOps, EmbeddingForwardCopiesRowsAndBackwardScattersRepeatedIds) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 333, V = 50, C = 96;  // V << N: many repeated ids
  const auto table = round_bf16(randn(size_t(V * C)));
  const auto ids = randint(size_t(N), int32_t(V));
  const auto dout = round_bf16(randn(size_t(N * C)));
  DeviceBuffer<bf16> dtable(to_bf16(table)), dd(to_bf16(dout)), out(size_t(N * C));
  DeviceBuffer<int32_t> did(ids);
  cuda::embedding_forward(did.get(), dtable.get(), out.get(), N, 0, V, V, C);
  Tensor ref = Tensor::empty({N, C}, DType::f32);
  ops::embedding_forward(Tensor::from<int32_t>({N}, ids), host({V, C}, table), ref);
  EXPECT_TRUE(close("out", out.download(), vec(ref), 0.0));

  const auto g0 = randn(size_t(V * C));  // backward adds into an existing gradient
  DeviceBuffer<float> dg(g0);
  cuda::embedding_backward(did.get(), dd.get(), dg.get(), N, 0, V, V, C);
  Tensor gref = host({V, C}, g0);
  ops::embedding_backward(Tensor::from<int32_t>({N}, ids), host({N, C}, dout), gref);
  EXPECT_TRUE(close("dtable", dg.download(), vec(gref), 1e-5));
}

TEST_F(CudaOps, EmbeddingIdOutsideVocabularyGivesNaNRow) {
  const int64_t V = 8, C = 16;
  DeviceBuffer<bf16> table(to_bf16(std::vector<float>(size_t(V * C), 1.f))), out(size_t(2 * C));
  DeviceBuffer<int32_t> ids(std::vector<int32_t>{3, 99});
  cuda::embedding_forward(ids.get(), table.get(), out.get(), 2, 0, V, V, C);
  const auto o = to_f32(out.download());
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_EQ(o[size_t(c)], 1.f);
    EXPECT_TRUE(std::isnan(o[size_t(C + c)]));
  }
}

// A shard of the table (tensor parallelism): ids another shard holds give zero rows and
// no gradient, exactly as the CPU twin (copies and single adds: exact up to the f32 atomics'
// order, bounded like the whole-table test).
TEST_F(CudaOps, EmbeddingShardMatchesCpuTwin) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 257, V = 60, first = 20, Vr = 25, C = 64;
  const auto table = round_bf16(randn(size_t(Vr * C)));
  const auto ids = randint(size_t(N), int32_t(V));
  const auto dout = round_bf16(randn(size_t(N * C)));
  DeviceBuffer<bf16> dtable(to_bf16(table)), dd(to_bf16(dout)), out(size_t(N * C));
  DeviceBuffer<int32_t> did(ids);
  cuda::embedding_forward(did.get(), dtable.get(), out.get(), N, first, Vr, V, C);
  Tensor ref = Tensor::empty({N, C}, DType::f32);
  ops::embedding_forward_shard(Tensor::from<int32_t>({N}, ids), host({Vr, C}, table), first, V, ref);
  EXPECT_TRUE(close("out", out.download(), vec(ref), 0.0));
  const auto g0 = randn(size_t(Vr * C));
  DeviceBuffer<float> dg(g0);
  cuda::embedding_backward(did.get(), dd.get(), dg.get(), N, first, Vr, V, C);
  Tensor gref = host({Vr, C}, g0);
  ops::embedding_backward_shard(Tensor::from<int32_t>({N}, ids), host({N, C}, dout), first, V, gref);
  EXPECT_TRUE(close("dtable", dg.download(), vec(gref), 1e-5));
}

// Debug mode (LETHE_DEBUG=1) trades the float atomics of the embedding gradient and of
// RMSNorm's dw for kernels that add in a fixed order: two runs agree bit for bit, and the
// embedding gradient equals the CPU twin's exactly (both add each f32 value in token order).
TEST_F(CudaOps, DebugModeGradientsAreBitwiseRepeatable) {
  SCOPED_TRACE(seed_msg());
  struct DebugOn {
    DebugOn() { set_debug_mode(true); }
    ~DebugOn() { set_debug_mode(false); }
  } debug;
  {
    const int64_t N = 300, V = 7, first = 2, Vr = 4, C = 96;  // few ids: many repeats per row
    const auto ids = randint(size_t(N), int32_t(V));
    const auto dout = round_bf16(randn(size_t(N * C)));
    const auto g0 = randn(size_t(Vr * C));
    DeviceBuffer<bf16> dd(to_bf16(dout));
    DeviceBuffer<int32_t> did(ids);
    std::vector<float> runs[2];
    for (auto& r : runs) {
      DeviceBuffer<float> dg(g0);
      cuda::embedding_backward(did.get(), dd.get(), dg.get(), N, first, Vr, V, C);
      r = dg.download();
    }
    Tensor gref = host({Vr, C}, g0);
    ops::embedding_backward_shard(Tensor::from<int32_t>({N}, ids), host({N, C}, dout), first, V, gref);
    EXPECT_EQ(runs[0], runs[1]);
    EXPECT_EQ(runs[0], vec(gref));
  }
  for (const int64_t C : {768, 770}) {
    const int64_t N = 1000;
    const auto x = round_bf16(randn(size_t(N * C))), w = round_bf16(randn(size_t(C), 0.2f, 1.f)),
               dy = round_bf16(randn(size_t(N * C))), dw0 = randn(static_cast<size_t>(C));
    Tensor yr = Tensor::empty({N, C}, DType::f32), rr = Tensor::empty({N}, DType::f32);
    ops::rmsnorm_forward(host({N, C}, x), host({C}, w), 1e-5, yr, rr);
    DeviceBuffer<bf16> dx_in(to_bf16(x)), dwt(to_bf16(w)), ddy(to_bf16(dy));
    DeviceBuffer<float> drstd(vec(rr));
    std::vector<float> dws[2];
    std::vector<bf16> dxs[2];
    for (int i = 0; i < 2; ++i) {
      DeviceBuffer<bf16> ddx(static_cast<size_t>(N * C));
      DeviceBuffer<float> ddw(dw0);
      cuda::rmsnorm_backward(ddy.get(), dx_in.get(), dwt.get(), drstd.get(), ddx.get(), false, ddw.get(), N, C);
      dws[i] = ddw.download();
      dxs[i] = ddx.download();
    }
    Tensor dxr = Tensor::empty({N, C}, DType::f32), dwr = host({C}, dw0);
    ops::rmsnorm_backward(host({N, C}, dy), host({N, C}, x), host({C}, w), rr, dxr, false, dwr);
    EXPECT_EQ(dws[0], dws[1]) << "C=" << C;
    EXPECT_EQ(0, std::memcmp(dxs[0].data(), dxs[1].data(), dxs[0].size() * sizeof(bf16))) << "C=" << C;
    EXPECT_TRUE(close("dx (debug mode)", dxs[0], vec(dxr), kBf16Tol)) << "C=" << C;
    EXPECT_TRUE(close("dw (debug mode)", dws[0], vec(dwr), kSumTol)) << "C=" << C;
  }
}

// ---- rmsnorm -----------------------------------------------------------------------
TEST_F(CudaOps, RmsNormForwardMatchesCpu) {
  SCOPED_TRACE(seed_msg());
  // 16-byte loads where C is a multiple of 8, one element at a time otherwise (1001).
  for (int64_t C : {64, 1000, 1001, 4096}) {
    const int64_t N = 67;
    const auto x = round_bf16(randn(size_t(N * C), 2.f)), w = round_bf16(randn(size_t(C), 0.2f, 1.f));
    DeviceBuffer<bf16> dx(to_bf16(x)), dw(to_bf16(w)), y(size_t(N * C));
    DeviceBuffer<float> rstd(static_cast<size_t>(N));
    cuda::rmsnorm_forward(dx.get(), dw.get(), 1e-5f, y.get(), rstd.get(), N, C);
    Tensor yr = Tensor::empty({N, C}, DType::f32), rr = Tensor::empty({N}, DType::f32);
    ops::rmsnorm_forward(host({N, C}, x), host({C}, w), 1e-5, yr, rr);
    EXPECT_TRUE(close("y", y.download(), vec(yr), kBf16Tol)) << "C=" << C;
    EXPECT_TRUE(close("rstd", rstd.download(), vec(rr), kF32Tol)) << "C=" << C;
  }
}

TEST_F(CudaOps, ResidualRmsNormAddsThenNormalises) {
  SCOPED_TRACE(seed_msg());
  // 16-byte accesses (512), one element at a time (1001).
  for (const int64_t C : {int64_t(512), int64_t(1001)}) {
  SCOPED_TRACE(C);
  const int64_t N = 45;
  const auto res = round_bf16(randn(size_t(N * C))), delta = round_bf16(randn(size_t(N * C))),
             w = round_bf16(randn(size_t(C), 0.2f, 1.f));
  DeviceBuffer<bf16> dres(to_bf16(res)), dd(to_bf16(delta)), dw(to_bf16(w)), y(size_t(N * C)),
      dsum(size_t(N * C));
  DeviceBuffer<float> rstd(static_cast<size_t>(N));
  // Into a separate sum, then in place over x.
  cuda::residual_rmsnorm_forward(dres.get(), dd.get(), dsum.get(), dw.get(), 1e-6f, y.get(), rstd.get(), N, C);
  std::vector<float> sum(res.size());
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = res[i] + delta[i];
  const auto sum_b = round_bf16(sum);
  EXPECT_TRUE(close("sum", dsum.download(), sum_b, 0.0));
  EXPECT_TRUE(close("x untouched", dres.download(), res, 0.0));
  cuda::residual_rmsnorm_forward(dres.get(), dd.get(), dres.get(), dw.get(), 1e-6f, y.get(), rstd.get(), N, C);
  EXPECT_TRUE(close("residual in place", dres.download(), sum_b, 0.0));
  Tensor yr = Tensor::empty({N, C}, DType::f32), rr = Tensor::empty({N}, DType::f32);
  ops::rmsnorm_forward(host({N, C}, sum_b), host({C}, w), 1e-6, yr, rr);
  EXPECT_TRUE(close("y", y.download(), vec(yr), kBf16Tol));
  EXPECT_TRUE(close("rstd", rstd.download(), vec(rr), kF32Tol));
  }
}

// A row length that allows 16-byte accesses (C = 64) with x starting one element into
// its buffer: the kernel must fall back to one element at a time, not fault.
TEST_F(CudaOps, RmsNormForwardOnAnUnalignedViewMatchesCpu) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 9, C = 64;
  const auto x = round_bf16(randn(size_t(N * C + 1), 2.f)), w = round_bf16(randn(size_t(C), 0.2f, 1.f));
  DeviceBuffer<bf16> dx(to_bf16(x)), dw(to_bf16(w)), y(size_t(N * C));
  DeviceBuffer<float> rstd(static_cast<size_t>(N));
  cuda::rmsnorm_forward(dx.get() + 1, dw.get(), 1e-5f, y.get(), rstd.get(), N, C);
  Tensor yr = Tensor::empty({N, C}, DType::f32), rr = Tensor::empty({N}, DType::f32);
  ops::rmsnorm_forward(host({N, C}, std::vector<float>(x.begin() + 1, x.end())), host({C}, w), 1e-5, yr, rr);
  EXPECT_TRUE(close("y", y.download(), vec(yr), kBf16Tol));
  EXPECT_TRUE(close("rstd", rstd.download(), vec(rr), kF32Tol));
}

TEST_F(CudaOps, RmsNormBackwardMatchesCpu) {
  SCOPED_TRACE(seed_msg());
  // 16384: the dw partials need more than 48 KB of shared memory (the opt-in path).
  for (const auto& [acc, C] :
       {std::pair<bool, int64_t>{false, 768}, {true, 768}, {false, 770}, {true, 770}, {true, 16384}}) {
    const int64_t N = C > 4096 ? 40 : 1000;
    const auto x = round_bf16(randn(size_t(N * C))), w = round_bf16(randn(size_t(C), 0.2f, 1.f)),
               dy = round_bf16(randn(size_t(N * C))), dx0 = round_bf16(randn(size_t(N * C))),
               dw0 = randn(static_cast<size_t>(C));
    Tensor yr = Tensor::empty({N, C}, DType::f32), rr = Tensor::empty({N}, DType::f32);
    ops::rmsnorm_forward(host({N, C}, x), host({C}, w), 1e-5, yr, rr);
    DeviceBuffer<bf16> dx_in(to_bf16(x)), dwt(to_bf16(w)), ddy(to_bf16(dy)), ddx(to_bf16(dx0));
    DeviceBuffer<float> drstd(vec(rr)), ddw(dw0);
    if (!acc) ddx.poison();
    cuda::rmsnorm_backward(ddy.get(), dx_in.get(), dwt.get(), drstd.get(), ddx.get(), acc, ddw.get(), N, C);
    Tensor dxr = host({N, C}, dx0), dwr = host({C}, dw0);
    ops::rmsnorm_backward(host({N, C}, dy), host({N, C}, x), host({C}, w), rr, dxr, acc, dwr);
    EXPECT_TRUE(close("dx", ddx.download(), vec(dxr), kBf16Tol)) << "accumulate=" << acc << " C=" << C;
    EXPECT_TRUE(close("dw", ddw.download(), vec(dwr), kSumTol)) << "accumulate=" << acc << " C=" << C;
  }
}

// ---- rope --------------------------------------------------------------------------
TEST_F(CudaOps, RopeForwardAndBackwardMatchCpuWithEveryScaling) {
  SCOPED_TRACE(seed_msg());
  const int64_t B = 2, T = 37;
  ops::RopeScaling none, linear, llama3;
  linear.type = "linear", linear.factor = 4;
  llama3.type = "llama3", llama3.factor = 8, llama3.original_max_position_embeddings = 16;
  // A block per token with (pair, head) threads: fewer heads than the block has rows
  // (D 16), more (H 40 at D 128).
  struct Shape {
    int64_t H, D;
  };
  for (const Shape shape : {Shape{3, 64}, Shape{5, 16}, Shape{40, 128}})
  for (const auto* sc : {&none, &linear, &llama3}) {
    const int64_t H = shape.H, D = shape.D;
    Tensor cos, sin;
    ops::rope_tables(ops::rope_inv_freq(D, 10000, *sc), T + 5, DType::f32, cos, sin);
    const auto x = round_bf16(randn(size_t(B * T * H * D)));
    DeviceBuffer<float> dcos(vec(cos)), dsin(vec(sin));
    DeviceBuffer<bf16> dx(to_bf16(x)), y(x.size()), inplace(to_bf16(x));
    cuda::rope_forward(dx.get(), dcos.get(), dsin.get(), y.get(), B, T, H, D);
    cuda::rope_forward(inplace.get(), dcos.get(), dsin.get(), inplace.get(), B, T, H, D);
    Tensor yr = Tensor::empty({B, T, H, D}, DType::f32), gr = Tensor::empty({B, T, H, D}, DType::f32);
    ops::rope_forward(host({B, T, H, D}, x), cos, sin, yr);
    EXPECT_TRUE(close("y", y.download(), vec(yr), kBf16Tol)) << sc->type;
    EXPECT_TRUE(close("y in place", inplace.download(), vec(yr), kBf16Tol)) << sc->type;
    DeviceBuffer<bf16> g(x.size());
    cuda::rope_backward(dx.get(), dcos.get(), dsin.get(), g.get(), B, T, H, D);
    ops::rope_backward(host({B, T, H, D}, x), cos, sin, gr);
    EXPECT_TRUE(close("dx", g.download(), vec(gr), kBf16Tol)) << sc->type;
  }
}

// The fused q/k/v projection's output split (q, k rotated; v copied) and its transpose,
// against the CPU twin: q and k as the rope test, v bit for bit (a copy). GQA (H 6, KV 2)
// and multi-head (H = KV) at D 64 and 128, where the token stride is not the heads' width.
TEST_F(CudaOps, QkvSplitAndMergeMatchCpu) {
  SCOPED_TRACE(seed_msg());
  const int64_t B = 2, T = 19;
  struct Heads {
    int64_t H, KV, D;
  };
  for (const Heads h : {Heads{6, 2, 64}, Heads{4, 4, 128}}) {
    const int64_t H = h.H, KV = h.KV, D = h.D, W = (H + 2 * KV) * D, N = B * T;
    Tensor cos, sin;
    ops::rope_tables(ops::rope_inv_freq(D, 10000, {}), T + 3, DType::f32, cos, sin);
    const auto x = round_bf16(randn(size_t(N * W)));
    const auto dq = round_bf16(randn(size_t(N * H * D))), dk = round_bf16(randn(size_t(N * KV * D))),
               dv = round_bf16(randn(size_t(N * KV * D)));
    DeviceBuffer<float> dcos(vec(cos)), dsin(vec(sin));
    DeviceBuffer<bf16> gx(to_bf16(x)), gq(size_t(N * H * D)), gk(size_t(N * KV * D)), gv(size_t(N * KV * D));
    cuda::qkv_split_rope(gx.get(), dcos.get(), dsin.get(), gq.get(), gk.get(), gv.get(), B, T, H, KV, D);
    Tensor q = Tensor::empty({B, T, H, D}, DType::f32), k = Tensor::empty({B, T, KV, D}, DType::f32), v = k.clone();
    ops::qkv_split_rope(host({N, W}, x), cos, sin, q, k, v);
    EXPECT_TRUE(close("q", gq.download(), vec(q), kBf16Tol)) << "H=" << H;
    EXPECT_TRUE(close("k", gk.download(), vec(k), kBf16Tol)) << "H=" << H;
    EXPECT_TRUE(close("v", gv.download(), vec(v), 0.0)) << "H=" << H;
    DeviceBuffer<bf16> gdq(to_bf16(dq)), gdk(to_bf16(dk)), gdv(to_bf16(dv)), gd(size_t(N * W));
    cuda::qkv_merge_rope_backward(gdq.get(), gdk.get(), gdv.get(), dcos.get(), dsin.get(), gd.get(), B, T, H, KV, D);
    Tensor d = Tensor::empty({N, W}, DType::f32);
    ops::qkv_merge_rope_backward(host({B, T, H, D}, dq), host({B, T, KV, D}, dk), host({B, T, KV, D}, dv), cos, sin,
                                 d);
    EXPECT_TRUE(close("dqkv", gd.download(), vec(d), kBf16Tol)) << "H=" << H;
  }
}

// ---- swiglu ------------------------------------------------------------------------
TEST_F(CudaOps, SwigluForwardAndBackwardMatchCpu) {
  SCOPED_TRACE(seed_msg());
  // 16-byte loads (F = 352) and one element at a time (F = 351).
  for (const int64_t F : {352, 351}) {
  // gu [N, 2F]: each row's gate values (scale 3, where silu bends), then its up values.
  const int64_t N = 77;
  std::vector<float> gu = round_bf16(randn(size_t(N * 2 * F)));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t i = 0; i < F; ++i) gu[size_t(r * 2 * F + i)] = bf16_to_float(float_to_bf16(3.f * gu[size_t(r * 2 * F + i)]));
  const auto da = round_bf16(randn(size_t(N * F)));
  DeviceBuffer<bf16> dgu_in(to_bf16(gu)), dda(to_bf16(da)), a(da.size()), dgu(gu.size());
  cuda::swiglu_forward(dgu_in.get(), a.get(), N, F);
  cuda::swiglu_backward(dda.get(), dgu_in.get(), dgu.get(), N, F);
  Tensor ar = Tensor::empty({N, F}, DType::f32), dgur = Tensor::empty({N, 2 * F}, DType::f32);
  ops::swiglu_forward(host({N, 2 * F}, gu), ar);
  ops::swiglu_backward(host({N, F}, da), host({N, 2 * F}, gu), dgur);
  EXPECT_TRUE(close("a", a.download(), vec(ar), kBf16Tol)) << "F=" << F;
  EXPECT_TRUE(close("dgu", dgu.download(), vec(dgur), kBf16Tol)) << "F=" << F;
  }
  // F = 352 with every buffer 2 bytes past a 16-byte boundary: the element-wise kernels
  // serve it although F is a multiple of 8.
  const int64_t N = 9, F = 352;
  const auto gu = round_bf16(randn(size_t(N * 2 * F) + 1)), da = round_bf16(randn(size_t(N * F) + 1));
  DeviceBuffer<bf16> g(to_bf16(gu)), d(to_bf16(da)), a(size_t(N * F) + 1), dg(size_t(N * 2 * F) + 1);
  cuda::swiglu_forward(g.get() + 1, a.get() + 1, N, F);
  cuda::swiglu_backward(d.get() + 1, g.get() + 1, dg.get() + 1, N, F);
  Tensor ar = Tensor::empty({N, F}, DType::f32), dgur = Tensor::empty({N, 2 * F}, DType::f32);
  const std::vector<float> gu1(gu.begin() + 1, gu.end()), da1(da.begin() + 1, da.end());
  ops::swiglu_forward(host({N, 2 * F}, gu1), ar);
  ops::swiglu_backward(host({N, F}, da1), host({N, 2 * F}, gu1), dgur);
  auto drop_first = [](std::vector<bf16> v) { return std::vector<bf16>(v.begin() + 1, v.end()); };
  EXPECT_TRUE(close("a (unaligned)", drop_first(a.download()), vec(ar), kBf16Tol));
  EXPECT_TRUE(close("dgu (unaligned)", drop_first(dg.download()), vec(dgur), kBf16Tol));
}

// ---- linear (cuBLASLt) -------------------------------------------------------------
TEST_F(CudaOps, LinearForwardAndBackwardMatchCpu) {
  SCOPED_TRACE(seed_msg());
  cuda::GemmContext* ctx = cuda::gemm_create();
  struct Case { int64_t N, in, out; };
  for (const Case c : {Case{37, 64, 48}, Case{256, 512, 1376}, Case{5, 128, 8}}) {
    const auto x = round_bf16(randn(size_t(c.N * c.in))), w = round_bf16(randn(size_t(c.out * c.in), 0.05f)),
               dy = round_bf16(randn(size_t(c.N * c.out))), dx0 = round_bf16(randn(size_t(c.N * c.in))),
               dw0 = randn(size_t(c.out * c.in));
    DeviceBuffer<bf16> dx_(to_bf16(x)), dw_(to_bf16(w)), ddy(to_bf16(dy)), y(size_t(c.N * c.out)),
        gx(size_t(c.N * c.in)), gx_acc(to_bf16(dx0));
    DeviceBuffer<float> gw(dw0);
    cuda::linear_forward(ctx, dx_.get(), dw_.get(), y.get(), c.N, c.in, c.out);
    cuda::linear_backward(ctx, ddy.get(), dx_.get(), dw_.get(), gx.get(), false, gw.get(), c.N, c.in, c.out);
    cuda::linear_backward(ctx, ddy.get(), dx_.get(), dw_.get(), gx_acc.get(), true, nullptr, c.N, c.in, c.out);
    Tensor yr = Tensor::empty({c.N, c.out}, DType::f32), gxr = Tensor::empty({c.N, c.in}, DType::f32),
           gxa = host({c.N, c.in}, dx0), gwr = host({c.out, c.in}, dw0);
    const Tensor X = host({c.N, c.in}, x), W = host({c.out, c.in}, w), DY = host({c.N, c.out}, dy);
    ops::linear_forward(X, W, yr);
    ops::linear_backward(DY, X, W, &gxr, false, &gwr);
    ops::linear_backward(DY, X, W, &gxa, true, nullptr);
    const std::string shape = std::to_string(c.N) + "x" + std::to_string(c.in) + "->" + std::to_string(c.out);
    EXPECT_TRUE(close("y", y.download(), vec(yr), kBf16Tol)) << shape;
    EXPECT_TRUE(close("dx", gx.download(), vec(gxr), kBf16Tol)) << shape;
    EXPECT_TRUE(close("dx accumulated", gx_acc.download(), vec(gxa), kBf16Tol)) << shape;
    EXPECT_TRUE(close("dw", gw.download(), vec(gwr), kSumTol)) << shape;
  }
  cuda::gemm_destroy(ctx);
}

// ---- attention ---------------------------------------------------------------------
struct AttnCase {
  int64_t B, T, H, KV, D;
};

TEST_F(CudaOps, FlashAttentionForwardAndBackwardMatchCpu) {
  SCOPED_TRACE(seed_msg());
  // Tiny model's head_dim 16, lengths that are not multiples of the 64-row tiles, MHA
  // and GQA groups of 2 and 4, the 7B head_dim 128; for the mma kernels' 128-row query
  // (forward) and key (backward) blocks: one past a block, and several blocks with a
  // ragged tail.
  for (const AttnCase c : {AttnCase{2, 100, 4, 2, 16}, AttnCase{1, 64, 2, 1, 32}, AttnCase{1, 130, 4, 4, 64},
                           AttnCase{1, 200, 8, 2, 128}, AttnCase{2, 17, 4, 1, 128}, AttnCase{1, 129, 2, 2, 64},
                           AttnCase{1, 300, 4, 1, 128}}) {
    const std::string name = "B" + std::to_string(c.B) + " T" + std::to_string(c.T) + " H" + std::to_string(c.H) +
                             " KV" + std::to_string(c.KV) + " D" + std::to_string(c.D);
    const size_t nq = size_t(c.B * c.T * c.H * c.D), nk = size_t(c.B * c.T * c.KV * c.D);
    const auto q = round_bf16(randn(nq)), k = round_bf16(randn(nk)), v = round_bf16(randn(nk)),
               dout = round_bf16(randn(nq));
    const double scale = 1.0 / std::sqrt(double(c.D));
    const Tensor Q = host({c.B, c.T, c.H, c.D}, q), K = host({c.B, c.T, c.KV, c.D}, k),
                 Vt = host({c.B, c.T, c.KV, c.D}, v), DO = host({c.B, c.T, c.H, c.D}, dout);
    Tensor o = Tensor::empty(Q.shape(), DType::f32), lse = Tensor::empty({c.B, c.H, c.T}, DType::f32);
    ops::attention_forward(Q, K, Vt, scale, o, lse);

    DeviceBuffer<bf16> gq(to_bf16(q)), gk(to_bf16(k)), gv(to_bf16(v)), gdo(to_bf16(dout)), go(nq), gdq(nq), gdk(nk),
        gdv(nk);
    DeviceBuffer<float> glse(size_t(c.B * c.H * c.T));
    DeviceBuffer<char> ws(cuda::attention_backward_workspace_bytes(c.B, c.T, c.H, c.D));
    cuda::attention_forward(gq.get(), gk.get(), gv.get(), float(scale), go.get(), glse.get(), c.B, c.T, c.H, c.KV,
                            c.D);
    const size_t D = size_t(c.D);  // a row: one head's vector at one position
    EXPECT_TRUE(close("o", go.download(), vec(o), kAttnFwdTol)) << name;
    EXPECT_TRUE(close_rows("o per row", go.download(), vec(o), D, kAttnFwdTol)) << name;
    EXPECT_TRUE(close("lse", glse.download(), vec(lse), kF32Tol)) << name;
    // The reference backward takes the inputs the GPU backward takes: the GPU's bf16 O and
    // its lse. With the reference's fp32 O instead, delta = rowsum(dO O) differs by O's
    // rounding, which rows with one or two visible keys (where dS nearly cancels) carry
    // into dq at up to 3.6e-2, past the bound, for a correct kernel (about a quarter of
    // seeds).
    Tensor dq = Tensor::empty(Q.shape(), DType::f32), dk = Tensor::empty(K.shape(), DType::f32),
           dv = Tensor::empty(K.shape(), DType::f32);
    ops::attention_backward(DO, Q, K, Vt, host(Q.shape(), to_f32(go.download())),
                            host(lse.shape(), glse.download()), scale, dq, dk, dv);
    {  // the register-resident forward on the same inputs
      DeviceBuffer<bf16> go2(nq);
      DeviceBuffer<float> glse2(size_t(c.B * c.H * c.T));
      cuda::set_attention_forward_kernel(cuda::AttentionForwardKernel::mma);
      cuda::attention_forward(gq.get(), gk.get(), gv.get(), float(scale), go2.get(), glse2.get(), c.B, c.T, c.H,
                              c.KV, c.D);
      cuda::set_attention_forward_kernel(cuda::AttentionForwardKernel::wmma);
      EXPECT_TRUE(close("o (mma forward)", go2.download(), vec(o), kAttnFwdTol)) << name;
      EXPECT_TRUE(close_rows("o per row (mma forward)", go2.download(), vec(o), D, kAttnFwdTol)) << name;
      EXPECT_TRUE(close("lse (mma forward)", glse2.download(), vec(lse), kF32Tol)) << name;
    }
    cuda::attention_backward(gdo.get(), gq.get(), gk.get(), gv.get(), go.get(), glse.get(), float(scale), gdq.get(),
                             gdk.get(), gdv.get(), ws.get(), c.B, c.T, c.H, c.KV, c.D);
    EXPECT_TRUE(close("dq", gdq.download(), vec(dq), kAttnBwdTol)) << name;
    EXPECT_TRUE(close("dk", gdk.download(), vec(dk), kAttnBwdTol)) << name;
    EXPECT_TRUE(close("dv", gdv.download(), vec(dv), kAttnBwdTol)) << name;
    EXPECT_TRUE(close_rows("dq per row", gdq.download(), vec(dq), D, kAttnBwdTol)) << name;
    EXPECT_TRUE(close_rows("dk per row", gdk.download(), vec(dk), D, kAttnBwdTol)) << name;
    EXPECT_TRUE(close_rows("dv per row", gdv.download(), vec(dv), D, kAttnBwdTol)) << name;
    // The FlashAttention-2-structured backward kernels on the same inputs; the
    // deterministic one twice, which must agree bit for bit.
    for (const auto kind : {cuda::AttentionBackwardKernel::mma, cuda::AttentionBackwardKernel::mma_deterministic}) {
      const std::string variant = std::string(" (") + cuda::attention_kernel_name(kind) + " backward)";
      std::vector<bf16> first_dq;
      for (int run = 0; run < (kind == cuda::AttentionBackwardKernel::mma_deterministic ? 2 : 1); ++run) {
        DeviceBuffer<bf16> gdq2(nq), gdk2(nk), gdv2(nk);
        cuda::set_attention_backward_kernel(kind);
        cuda::attention_backward(gdo.get(), gq.get(), gk.get(), gv.get(), go.get(), glse.get(), float(scale),
                                 gdq2.get(), gdk2.get(), gdv2.get(), ws.get(), c.B, c.T, c.H, c.KV, c.D);
        cuda::set_attention_backward_kernel(cuda::AttentionBackwardKernel::wmma);
        const std::vector<bf16> dq2 = gdq2.download();
        EXPECT_TRUE(close(("dq" + variant).c_str(), dq2, vec(dq), kAttnBwdTol)) << name;
        EXPECT_TRUE(close(("dk" + variant).c_str(), gdk2.download(), vec(dk), kAttnBwdTol)) << name;
        EXPECT_TRUE(close(("dv" + variant).c_str(), gdv2.download(), vec(dv), kAttnBwdTol)) << name;
        EXPECT_TRUE(close_rows(("dq per row" + variant).c_str(), dq2, vec(dq), D, kAttnBwdTol)) << name;
        EXPECT_TRUE(close_rows(("dk per row" + variant).c_str(), gdk2.download(), vec(dk), D, kAttnBwdTol)) << name;
        EXPECT_TRUE(close_rows(("dv per row" + variant).c_str(), gdv2.download(), vec(dv), D, kAttnBwdTol)) << name;
        if (run == 0) first_dq = dq2;
        else EXPECT_EQ(0, std::memcmp(first_dq.data(), dq2.data(), dq2.size() * sizeof(bf16))) << name << variant;
      }
    }
  }
}

// One query row against a cache, judged per element. The GPU and the CPU reference differ in
// the order of their fp32 sums and in exp2's last bits, which can move a probability across
// a bf16 rounding boundary: one bf16 step of P_j at most (2^-7 relative: 7 stored mantissa
// bits), so at most 2^-7 max_j |v_jd| in output d, as the weights sum to 1; and the GPU
// rounds o to bf16 where the reference's o is fp32 (half a step, 2^-8 |o_d|). The fp32
// differences themselves are far below these; 2^-6 of slack covers them.
TEST_F(CudaOps, AttentionDecodeMatchesCpuPerElement) {
  SCOPED_TRACE(seed_msg());
  struct Case {
    int64_t B, S, H, KV, D, n;
  };
  // One key; exactly one tile; one past it; several tiles with a ragged tail; MHA; D 256.
  for (const Case c : {Case{2, 320, 8, 2, 128, 1}, Case{2, 320, 8, 2, 128, 64}, Case{2, 320, 8, 2, 128, 65},
                       Case{2, 320, 8, 2, 128, 300}, Case{1, 70, 4, 4, 64, 70}, Case{3, 40, 4, 1, 16, 37},
                       Case{1, 130, 2, 1, 256, 130}}) {
    const std::string name = "B" + std::to_string(c.B) + " S" + std::to_string(c.S) + " H" + std::to_string(c.H) +
                             " KV" + std::to_string(c.KV) + " D" + std::to_string(c.D) + " n" + std::to_string(c.n);
    const size_t nq = size_t(c.B * c.H * c.D), nk = size_t(c.B * c.S * c.KV * c.D);
    // Scores of order 3 after scaling: a peaked softmax, as trained models give.
    const auto q = round_bf16(randn(nq, 2.f)), k = round_bf16(randn(nk, 1.5f)), v = round_bf16(randn(nk));
    const double scale = 1.0 / std::sqrt(double(c.D));
    const Tensor Q = host({c.B, 1, c.H, c.D}, q), K = host({c.B, c.S, c.KV, c.D}, k), Vt = host({c.B, c.S, c.KV, c.D}, v);
    Tensor o = Tensor::empty(Q.shape(), DType::f32);
    ops::attention_decode(Q, K, Vt, c.n, scale, o, Precision::bf16);
    DeviceBuffer<bf16> gq(to_bf16(q)), gk(to_bf16(k)), gv(to_bf16(v)), go(nq);
    cuda::attention_decode(gq.get(), gk.get(), gv.get(), c.n, float(scale), go.get(), c.B, c.S, c.H, c.KV, c.D);
    const std::vector<float> g = to_f32(go.download()), r = vec(o);
    int64_t bad = 0;
    std::string first;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t d = 0; d < c.D; ++d) {
          double vmax = 0;
          for (int64_t j = 0; j < c.n; ++j)
            vmax = std::max(vmax, double(std::abs(v[size_t(((b * c.S + j) * c.KV + h / (c.H / c.KV)) * c.D + d)])));
          const size_t i = size_t((b * c.H + h) * c.D + d);
          const double bound = (std::ldexp(vmax, -7) + std::ldexp(std::abs(double(r[i])), -8)) * (1 + 1.0 / 64) + 1e-6;
          if (!(std::abs(double(g[i]) - double(r[i])) <= bound)) {
            if (!bad++)
              first = "b " + std::to_string(b) + " h " + std::to_string(h) + " d " + std::to_string(d) + ": gpu " +
                      std::to_string(g[i]) + ", reference " + std::to_string(r[i]) + ", bound " + std::to_string(bound);
          }
        }
    EXPECT_EQ(bad, 0) << name << ": first " << first;
  }
  EXPECT_THROW(cuda::attention_decode(nullptr, nullptr, nullptr, 1, 1.f, nullptr, 1, 8, 2, 2, 512), Error);
}

TEST_F(CudaOps, AttentionRejectsUnsupportedHeadDim) {
  EXPECT_FALSE(cuda::attention_supports_head_dim(48));
  EXPECT_THROW(cuda::attention_forward(nullptr, nullptr, nullptr, 1.f, nullptr, nullptr, 1, 8, 2, 2, 48), Error);
  EXPECT_THROW(cuda::attention_forward(nullptr, nullptr, nullptr, 1.f, nullptr, nullptr, 1, 8, 3, 2, 64), Error);
}

// The residual add: the fp32 sum of two bf16 values rounded once to nearest even, bit for
// bit the host's float_to_bf16 (NaN and infinities included); in place as the layer uses it.
TEST_F(CudaOps, AddIsTheHostRoundingBitForBit) {
  SCOPED_TRACE(seed_msg());
  const int64_t n = 100003;
  auto a = round_bf16(randn(size_t(n), 4.f)), b = round_bf16(randn(size_t(n), 0.01f));
  a[0] = INFINITY, b[1] = std::nanf(""), a[2] = 3.0e38f, b[2] = 3.0e38f;  // overflow to inf
  std::vector<uint16_t> want(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) want[size_t(i)] = float_to_bf16(a[size_t(i)] + b[size_t(i)]).bits;
  DeviceBuffer<bf16> ga(to_bf16(a)), gb(to_bf16(b)), out(static_cast<size_t>(n));
  cuda::add(ga.get(), gb.get(), out.get(), n);
  cuda::add(ga.get(), gb.get(), ga.get(), n);  // out = a, in place
  const auto o = out.download(), inplace = ga.download();
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool nan = std::isnan(a[size_t(i)] + b[size_t(i)]);
    const auto same = [&](bf16 g) { return nan ? std::isnan(bf16_to_float(g)) : g.bits == want[size_t(i)]; };
    bad += !same(o[size_t(i)]) + !same(inplace[size_t(i)]);
  }
  EXPECT_EQ(bad, 0);
}

// ---- cross-entropy, KL, moments ----------------------------------------------------
TEST_F(CudaOps, CrossEntropyLogprobsWeightsAndFusedGradientMatchCpu) {
  SCOPED_TRACE(seed_msg());
  // A multiple of 8 takes the 16-byte kernels, 5003 the element-wise ones.
  for (const int64_t V : {int64_t(5003), int64_t(5000)}) {
    SCOPED_TRACE("V = " + std::to_string(V));
    const int64_t N = 19;
    const auto logits = round_bf16(randn(size_t(N * V), 3.f));
    auto targets = randint(size_t(N), int32_t(V));
    targets[3] = targets[11] = ops::kIgnoreIndex;
    std::vector<float> w(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) w[size_t(i)] = (i % 3 == 0 ? -1.f : 1.f) / float(N);  // ascent on some rows
    const float dloss = 0.75f;
    const Tensor L = host({N, V}, logits), TG = Tensor::from<int32_t>({N}, targets), W = host({N}, w);
    Tensor lp = Tensor::empty({N}, DType::f32), lse = lp.clone(), dl = Tensor::empty({N, V}, DType::f32);
    const double loss = ops::cross_entropy_forward(L, TG, W, lp, lse);
    ops::cross_entropy_backward(L, TG, W, lse, dloss, dl);

    DeviceBuffer<bf16> gl(to_bf16(logits)), gdl(size_t(N * V)), inplace(to_bf16(logits)), unfused(size_t(N * V));
    DeviceBuffer<int32_t> gt(targets);
    DeviceBuffer<float> gw(w), glp(static_cast<size_t>(N)), glse(static_cast<size_t>(N));
    DeviceBuffer<float> glp2(static_cast<size_t>(N)), glse2(static_cast<size_t>(N));
    DeviceBuffer<double> gloss(1);
    cuda::cross_entropy_forward(gl.get(), gt.get(), gw.get(), glp.get(), glse.get(), gdl.get(), dloss, N, V);
    cuda::weighted_nll(glp.get(), gt.get(), gw.get(), gloss.get(), N, false);
    EXPECT_TRUE(close("logprobs", glp.download(), vec(lp), kF32Tol));
    EXPECT_TRUE(close("lse", glse.download(), vec(lse), kF32Tol));
    EXPECT_TRUE(close("dlogits (fused)", gdl.download(), vec(dl), kBf16Tol));
    EXPECT_NEAR(gloss.download()[0], loss, kF32Tol * std::max(1.0, std::abs(loss)));
    // In place over the logits, as the step uses it: the logits buffer becomes the gradient.
    cuda::cross_entropy_forward(inplace.get(), gt.get(), gw.get(), glp2.get(), glse2.get(), inplace.get(), dloss, N, V);
    EXPECT_TRUE(close("dlogits (in place)", inplace.download(), vec(dl), kBf16Tol));
    EXPECT_TRUE(close("logprobs (in place)", glp2.download(), vec(lp), kF32Tol));
    // Unfused backward from the saved lse.
    cuda::cross_entropy_backward(gl.get(), gt.get(), gw.get(), glse.get(), dloss, unfused.get(), N, 0, V, V);
    EXPECT_TRUE(close("dlogits (unfused)", unfused.download(), vec(dl), kBf16Tol));
    // The same rows starting 2 bytes past a 16-byte boundary: the element-wise kernels serve
    // them even where V is a multiple of 8.
    std::vector<float> padded(logits);
    padded.insert(padded.begin(), 0.f);
    DeviceBuffer<bf16> shifted(to_bf16(padded)), dshifted(size_t(N * V + 1));
    cuda::cross_entropy_forward(shifted.get() + 1, gt.get(), gw.get(), glp2.get(), glse2.get(), dshifted.get() + 1,
                                dloss, N, V);
    auto ds = dshifted.download();
    ds.erase(ds.begin());
    EXPECT_TRUE(close("dlogits (unaligned rows)", ds, vec(dl), kBf16Tol));
    EXPECT_TRUE(close("logprobs (unaligned rows)", glp2.download(), vec(lp), kF32Tol));
  }
}

// Rows the CPU twin special-cases: an ignored row and a zero-weight row get exact zeros in
// the gradient even when a logit is infinite (0 * (p - onehot) would be NaN there); a NaN
// logit in the first column (the first value a thread merges) still makes the row's lse
// and log-prob NaN, as the CPU's sum does, rather than vanishing from the maximum.
TEST_F(CudaOps, CrossEntropySpecialRowsMatchCpuTwin) {
  SCOPED_TRACE(seed_msg());
  // A multiple of 8 takes the 16-byte kernels, 1001 the element-wise ones.
  for (const int64_t V : {int64_t(1000), int64_t(1001)}) {
    SCOPED_TRACE("V = " + std::to_string(V));
    const int64_t N = 6;
    auto logits = round_bf16(randn(size_t(N * V)));
    logits[size_t(0 * V + 5)] = INFINITY;    // row 0: ignored
    logits[size_t(1 * V + 9)] = INFINITY;    // row 1: weight 0
    logits[size_t(2 * V + 0)] = std::nanf("");  // row 2: NaN first
    logits[size_t(4 * V + 17)] = INFINITY;   // row 4: +inf: exp(inf - inf) makes the CPU's sum NaN
    logits[size_t(5 * V + 1)] = -INFINITY;   // row 5: -inf logits are probability 0
    logits[size_t(5 * V + V - 1)] = -INFINITY;
    const std::vector<int32_t> targets{ops::kIgnoreIndex, 3, 7, 11, 3, 3};
    const std::vector<float> w{1.f, 0.f, 1.f, 1.f, 1.f, 1.f};
    DeviceBuffer<bf16> gl(to_bf16(logits)), fused(size_t(N * V)), unfused(size_t(N * V));
    DeviceBuffer<int32_t> gt(targets);
    DeviceBuffer<float> gw(w), glp(static_cast<size_t>(N)), glse(static_cast<size_t>(N));
    cuda::cross_entropy_forward(gl.get(), gt.get(), gw.get(), glp.get(), glse.get(), fused.get(), 1.f, N, V);
    cuda::cross_entropy_backward(gl.get(), gt.get(), gw.get(), glse.get(), 1.f, unfused.get(), N, 0, V, V);
    const auto lp = glp.download(), lse = glse.download();
    const auto f = to_f32(fused.download()), u = to_f32(unfused.download());
    EXPECT_EQ(lp[0], 0.f);
    for (int64_t i : {int64_t(0), int64_t(1)})
      for (int64_t j = 0; j < V; ++j) {
        ASSERT_EQ(f[size_t(i * V + j)], 0.f) << "fused row " << i << " column " << j;
        ASSERT_EQ(u[size_t(i * V + j)], 0.f) << "unfused row " << i << " column " << j;
      }
    EXPECT_TRUE(std::isnan(lse[2])) << lse[2];
    EXPECT_TRUE(std::isnan(lp[2])) << lp[2];
    EXPECT_TRUE(std::isfinite(lse[3]) && std::isfinite(lp[3]));
    EXPECT_TRUE(std::isnan(lse[4])) << lse[4];
    EXPECT_TRUE(std::isfinite(lse[5]) && std::isfinite(lp[5])) << lse[5] << " " << lp[5];
    for (int64_t j : {int64_t(1), V - 1}) {
      EXPECT_EQ(f[size_t(5 * V + j)], 0.f) << "fused row 5 column " << j;
      EXPECT_EQ(u[size_t(5 * V + j)], 0.f) << "unfused row 5 column " << j;
    }
  }
}

// The vocabulary-parallel pieces over a shard [first, first + Vr) against their CPU twins:
// the maximum and the target's logit are exact (a max and a copy of bf16 values), the sum
// of exp in double differs from the CPU's only in the order of the additions and the
// device's exp (positive terms: the order costs at most n eps = 4104 x 1.1e-16 = 4.6e-13
// relative, the exp 1 ulp, so relative 1e-12 covers both); the backward as the
// whole-vocabulary one.
TEST_F(CudaOps, CrossEntropyShardPiecesMatchCpuTwins) {
  SCOPED_TRACE(seed_msg());
  // A shard width that is a multiple of 8 takes the 16-byte kernels, 123 the element-wise
  // ones; 4104 > 512 threads x 8 makes each thread take several 16-byte accesses.
  for (const int64_t Vr : {int64_t(120), int64_t(123), int64_t(4104)}) {
    SCOPED_TRACE("Vr = " + std::to_string(Vr));
    const int64_t N = 37, V = 4400, first = 100;
    const auto logits = round_bf16(randn(size_t(N * Vr), 3.0f));
    auto targets = randint(size_t(N), int32_t(V));
    targets[3] = ops::kIgnoreIndex;
    targets[5] = int32_t(first);  // the shard's first and last ids
    targets[6] = int32_t(first + Vr - 1);
    std::vector<float> w(size_t(N), 0.5f);
    const Tensor L = host({N, Vr}, logits), TG = Tensor::from<int32_t>({N}, targets), W = host({N}, w);
    Tensor mx = Tensor::empty({N}, DType::f32), z = mx.clone(), se = Tensor::empty({N}, DType::f64);
    ops::cross_entropy_shard_max(L, TG, first, V, mx, z);
    ops::cross_entropy_shard_sumexp(L, mx, se);
    Tensor lse = Tensor::empty({N}, DType::f32), dl = Tensor::empty({N, Vr}, DType::f32);
    for (int64_t i = 0; i < N; ++i) lse.data<float>()[i] = mx.data<float>()[i] + 1.5f;  // any whole-vocabulary lse
    ops::cross_entropy_backward_shard(L, TG, W, lse, first, V, 0.75, dl);

    DeviceBuffer<bf16> gl(to_bf16(logits)), gdl(size_t(N * Vr));
    DeviceBuffer<int32_t> gt(targets);
    DeviceBuffer<float> gw(w), gmx(static_cast<size_t>(N)), gz(static_cast<size_t>(N)), glse(vec(lse));
    DeviceBuffer<double> gse(static_cast<size_t>(N));
    cuda::cross_entropy_shard_max(gl.get(), gt.get(), gmx.get(), gz.get(), N, first, Vr);
    cuda::cross_entropy_shard_sumexp(gl.get(), gmx.get(), gse.get(), false, N, Vr);
    cuda::cross_entropy_backward(gl.get(), gt.get(), gw.get(), glse.get(), 0.75f, gdl.get(), N, first, Vr, V);
    EXPECT_TRUE(close("rowmax", gmx.download(), vec(mx), 0.0));
    EXPECT_TRUE(close("target_logit", gz.download(), vec(z), 0.0));
    const auto s = gse.download();
    for (int64_t i = 0; i < N; ++i)
      EXPECT_NEAR(s[size_t(i)], se.data<double>()[i], 1e-12 * se.data<double>()[i]) << "row " << i;
    EXPECT_TRUE(close("dlogits", gdl.download(), vec(dl), kBf16Tol));
  }
}

// The statistics' last step on the device (what the tensor-parallel loss runs after its
// all-reduces) and the KL's weighted total, from the same inputs as their CPU twins. Both
// add to what the accumulator holds. lse = f32(m + log s) may differ from the CPU's by the
// last bit where the device's log and glibc's round a double differently (1 f32 ulp, 6e-8
// relative); the log-probabilities z - lse inherit that ulp of lse (|lse| <= 3 + log V
// here), and the loss sums them in another order: kF32Tol bounds both.
TEST_F(CudaOps, CrossEntropyShardFinishAndWeightedRowSumMatchCpuTwins) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 1100, V = 5000;  // more rows than one block's threads
  std::vector<float> m = randn(size_t(N), 3.f), z = randn(size_t(N), 3.f), w = randn(size_t(N), 0.1f);
  std::vector<double> se(static_cast<size_t>(N)), kl(se), rw(se);
  const auto u = randn(size_t(N), 1.f), v = randn(size_t(N), 1.f);
  for (int64_t i = 0; i < N; ++i) {
    se[size_t(i)] = 1.0 + double(V) * std::abs(u[size_t(i)]);
    kl[size_t(i)] = std::abs(v[size_t(i)]);
    rw[size_t(i)] = i % 7 == 0 ? 0.0 : 1.0 / double(N);
  }
  auto targets = randint(size_t(N), int32_t(V));
  targets[3] = targets[600] = ops::kIgnoreIndex;
  const Tensor M = host({N}, m), Z = host({N}, z), W = host({N}, w), TG = Tensor::from<int32_t>({N}, targets);
  const Tensor SE = Tensor::from<double>({N}, se), KL = Tensor::from<double>({N}, kl), RW = Tensor::from<double>({N}, rw);
  Tensor lse = Tensor::empty({N}, DType::f32), lp = lse.clone(), loss = Tensor::from<double>({1}, {0.25});
  Tensor lse64 = Tensor::empty({N}, DType::f64), total = Tensor::from<double>({1}, {-0.5}), none;
  ops::cross_entropy_shard_finish(M, SE, Z, TG, W, lse, lp, loss);
  ops::cross_entropy_shard_finish(M, SE, none, none, none, lse64, none, none);
  ops::weighted_row_sum(KL, RW, total);

  DeviceBuffer<float> gm(m), gz(z), gw(w), glse(static_cast<size_t>(N)), glp(static_cast<size_t>(N));
  DeviceBuffer<double> gse(se), gkl(kl), grw(rw), glse64(static_cast<size_t>(N)), gloss(std::vector<double>{0.25}),
      gtotal(std::vector<double>{-0.5});
  DeviceBuffer<int32_t> gt(targets);
  cuda::cross_entropy_shard_finish(gm.get(), gse.get(), gz.get(), gt.get(), gw.get(), glse.get(), nullptr, glp.get(),
                                   gloss.get(), N);
  cuda::cross_entropy_shard_finish(gm.get(), gse.get(), nullptr, nullptr, nullptr, nullptr, glse64.get(), nullptr,
                                   nullptr, N);
  cuda::weighted_row_sum(gkl.get(), grw.get(), gtotal.get(), N);
  const std::vector<float> l32 = glse.download();
  const std::vector<double> l64 = glse64.download();
  EXPECT_TRUE(close("lse", l32, vec(lse), kF32Tol));
  EXPECT_TRUE(close("logprobs", glp.download(), vec(lp), kF32Tol));
  for (int64_t i = 0; i < N; ++i)  // the f32 value widened: the same as the f32 lse
    EXPECT_EQ(l64[size_t(i)], double(l32[size_t(i)])) << "row " << i;
  const double want = loss.data<double>()[0];
  EXPECT_NEAR(gloss.download()[0], want, kF32Tol * std::max(1.0, std::abs(want)));
  // Only the order of a double sum differs: 1e-12 of the sum of |terms| (about 1).
  EXPECT_NEAR(gtotal.download()[0], total.data<double>()[0], 1e-12);
}

// RMU's hidden-state MSE against its CPU twin on the same bf16 values, toward a target and
// toward a steering vector. The differences and dh's values are formed in double from
// bf16 inputs on both sides and rounded once to f32: equal to 1 f32 ulp (6e-8 relative,
// kF32Tol bounds it). The loss sums the same double squares in another order: 1e-12.
TEST_F(CudaOps, HiddenMseMatchesCpuTwin) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 37, C = 300;
  const auto h = round_bf16(randn(size_t(N * C), 2.f)), x = round_bf16(randn(size_t(N * C), 2.f));
  const auto u = randn(size_t(C), 3.f);
  std::vector<double> steer(u.begin(), u.end());
  auto targets = randint(size_t(N), 100);
  targets[0] = targets[20] = ops::kIgnoreIndex;
  const Tensor H = host({N, C}, h), X = host({N, C}, x), TG = Tensor::from<int32_t>({N}, targets);
  const Tensor S = Tensor::from<double>({C}, steer), none;
  const double scale = 0.7, denom = double((N - 2) * C);
  DeviceBuffer<bf16> gh(to_bf16(h)), gx(to_bf16(x));
  DeviceBuffer<double> gs(steer), rows(static_cast<size_t>(N));
  DeviceBuffer<int32_t> gt(targets);
  for (const bool toward_target : {true, false}) {
    SCOPED_TRACE(toward_target ? "toward a target" : "toward a steering vector");
    Tensor dh = Tensor::empty({N, C}, DType::f32), loss = Tensor::from<double>({1}, {0.5});
    ops::hidden_mse(H, toward_target ? X : none, toward_target ? none : S, TG, scale, denom, dh, loss);
    DeviceBuffer<float> gdh(size_t(N * C));
    DeviceBuffer<double> gloss(std::vector<double>{0.5});
    cuda::hidden_mse(gh.get(), toward_target ? gx.get() : nullptr, toward_target ? nullptr : gs.get(), gt.get(), scale,
                     denom, gdh.get(), rows.get(), gloss.get(), N, C);
    EXPECT_TRUE(close("dh", gdh.download(), vec(dh), kF32Tol));
    const auto g = gdh.download();
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(g[size_t(20 * C + c)], 0.f) << "an ignored row's gradient";
    EXPECT_NEAR(gloss.download()[0], loss.data<double>()[0], 1e-12 * loss.data<double>()[0]);
  }
}

// The first maximum of each row over a shard, skipping one id, against the CPU twin: a
// comparison of bf16 values, exact. Ties (a row of equal values, a repeated maximum) take
// the first column; the excluded id's column is never chosen.
TEST_F(CudaOps, ArgmaxShardMatchesCpuTwinWithTies) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 9, V = 700, first = 1000;
  auto logits = round_bf16(randn(size_t(N * V)));
  for (int64_t j = 0; j < V; ++j) logits[size_t(2 * V + j)] = 0.5f;  // all tied
  logits[size_t(3 * V + 10)] = logits[size_t(3 * V + 600)] = 9.f;   // a repeated maximum
  logits[size_t(4 * V + 5)] = 9.f;                                  // the maximum, excluded
  std::vector<int32_t> exclude(static_cast<size_t>(N), -100);
  exclude[4] = int32_t(first + 5);
  exclude[2] = int32_t(first);  // the tied row's first column is excluded: the second wins
  const Tensor L = host({N, V}, logits), E = Tensor::from<int32_t>({N}, exclude);
  Tensor best = Tensor::empty({N}, DType::f32), arg = Tensor::empty({N}, DType::i32);
  ops::argmax_shard(L, E, first, best, arg);
  EXPECT_EQ(arg.data<int32_t>()[2], first + 1);
  EXPECT_EQ(arg.data<int32_t>()[3], first + 10);
  EXPECT_NE(arg.data<int32_t>()[4], first + 5);
  DeviceBuffer<bf16> gl(to_bf16(logits));
  DeviceBuffer<int32_t> ge(exclude), garg(static_cast<size_t>(N));
  DeviceBuffer<float> gbest(static_cast<size_t>(N));
  cuda::argmax_shard(gl.get(), ge.get(), first, gbest.get(), garg.get(), N, V);
  const auto a = garg.download();
  const auto b = gbest.download();
  for (int64_t i = 0; i < N; ++i) {
    EXPECT_EQ(a[size_t(i)], arg.data<int32_t>()[i]) << "row " << i;
    EXPECT_EQ(b[size_t(i)], best.data<float>()[i]) << "row " << i;
  }
}

// The inverse CDF over a shard: the device sums each thread's segment and then the
// segments, the CPU in column order; both sums of V positive terms are within V 2^-53 of
// the exact one relative to the total Z, and the device's exp within 1 ulp (2^-52) per
// term, so the two running sums differ by at most 4 V 2^-53 Z. The drawn column must
// bracket the target within that: prefix(j - 1) <= t + tol and prefix(j) > t - tol, with
// the prefixes computed here in column order. Rows past the total take the last column;
// negative targets give -1.
TEST_F(CudaOps, InverseCdfShardBracketsTheTarget) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 40, V = 5003, first = 7;  // 5003: ragged segments of 10 columns
  const auto logits = round_bf16(randn(size_t(N * V), 3.0f));
  std::vector<float> mx(static_cast<size_t>(N));
  std::vector<double> target(static_cast<size_t>(N)), total(static_cast<size_t>(N));
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::vector<std::vector<double>> prefix(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    const float* x = logits.data() + i * V;
    mx[size_t(i)] = *std::max_element(x, x + V);
    double acc = 0;
    for (int64_t j = 0; j < V; ++j) prefix[size_t(i)].push_back(acc += std::exp(double(x[j]) - double(mx[size_t(i)])));
    total[size_t(i)] = acc;
    target[size_t(i)] = (i == 0 ? 0.0 : i == 1 ? 1.5 : unif(rng_)) * acc;
  }
  target[2] = -1.0;
  DeviceBuffer<bf16> gl(to_bf16(logits));
  DeviceBuffer<float> gm(mx);
  DeviceBuffer<double> gt(target);
  DeviceBuffer<int32_t> garg(static_cast<size_t>(N));
  cuda::inverse_cdf_shard(gl.get(), gm.get(), gt.get(), first, garg.get(), N, V);
  const auto a = garg.download();
  EXPECT_EQ(a[0], first);
  EXPECT_EQ(a[1], first + V - 1);
  EXPECT_EQ(a[2], -1);
  for (int64_t i = 3; i < N; ++i) {
    const int64_t j = int64_t(a[size_t(i)]) - first;
    ASSERT_TRUE(j >= 0 && j < V) << "row " << i << ": column " << j;
    const double t = target[size_t(i)], tol = 4.0 * double(V) * std::ldexp(1.0, -53) * total[size_t(i)];
    const auto& p = prefix[size_t(i)];
    EXPECT_GT(p[size_t(j)], t - tol) << "row " << i;
    if (j > 0) {
      EXPECT_LE(p[size_t(j - 1)], t + tol) << "row " << i;
    }
  }
}

// The top-K list of each row against the CPU twin: comparisons of bf16 values, so exact,
// ties (values on a grid of 1/4) by smaller id, a NaN as -inf, padding past the row.
TEST_F(CudaOps, TopkShardMatchesCpuTwinWithTies) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 11, V = 700, first = 300;
  auto logits = randn(size_t(N * V), 2.0f);
  for (auto& x : logits) x = std::round(x * 4) / 4;
  logits[size_t(1 * V + 9)] = std::nanf("");
  for (int64_t j = 0; j < V; ++j) logits[size_t(2 * V + j)] = 1.0f;  // all tied
  DeviceBuffer<bf16> gl(to_bf16(logits));
  const Tensor L = host({N, V}, round_bf16(logits));
  for (const int64_t K : {int64_t(1), int64_t(36), V, V + 5}) {
    SCOPED_TRACE(K);
    Tensor vals = Tensor::empty({N, K}, DType::f32), ids = Tensor::empty({N, K}, DType::i32);
    ops::topk_shard(L, first, vals, ids);
    DeviceBuffer<float> gv(static_cast<size_t>(N * K));
    DeviceBuffer<int32_t> gi(static_cast<size_t>(N * K));
    cuda::topk_shard(gl.get(), first, gv.get(), gi.get(), N, V, K);
    const auto v = gv.download();
    const auto id = gi.download();
    for (int64_t e = 0; e < N * K; ++e) {
      EXPECT_EQ(id[size_t(e)], ids.data<int32_t>()[e]) << "row " << e / K << " rank " << e % K;
      EXPECT_EQ(v[size_t(e)], vals.data<float>()[e]) << "row " << e / K << " rank " << e % K;
    }
  }
}

// KL over a shard against its CPU twin, given the same log-sum-exps: the per-row sum in
// double differs in the order of its additions and the device's exp (1 ulp), bounded by
// 1e-10 absolute for these rows (each |term| < 30, V = 200 terms); the gradient is the same
// double value stored through f32 into bf16, within the bf16 tolerance the other ops use.
TEST_F(CudaOps, KlShardMatchesCpuTwin) {
  SCOPED_TRACE(seed_msg());
  // A multiple of 8 takes the 16-byte kernels, 203 the element-wise ones.
  for (const int64_t V : {int64_t(200), int64_t(203)}) {
    SCOPED_TRACE("V = " + std::to_string(V));
    const int64_t N = 23;
    const auto ref = round_bf16(randn(size_t(N * V), 2.0f)), logits = round_bf16(randn(size_t(N * V), 2.0f));
    std::vector<double> lq(static_cast<size_t>(N)), lp(static_cast<size_t>(N)), w(static_cast<size_t>(N), 0.25);
    w[4] = 0.0;  // a skipped row
    for (int64_t i = 0; i < N; ++i) {
      lq[size_t(i)] = 4.0 + 0.01 * double(i);  // any log-sum-exps: the op takes them as given
      lp[size_t(i)] = 4.5 - 0.01 * double(i);
    }
    const Tensor R = host({N, V}, ref), X = host({N, V}, logits);
    Tensor kl = Tensor::empty({N}, DType::f64), dl = Tensor::empty({N, V}, DType::f32);
    ops::kl_shard(R, X, Tensor::from<double>({N}, lq), Tensor::from<double>({N}, lp), Tensor::from<double>({N}, w), 0.5,
                  kl, &dl);
    DeviceBuffer<bf16> gr(to_bf16(ref)), gx(to_bf16(logits)), gdl(static_cast<size_t>(N * V));
    DeviceBuffer<double> glq(lq), glp(lp), gw(w), gkl(static_cast<size_t>(N));
    cuda::kl_shard(gr.get(), gx.get(), glq.get(), glp.get(), gw.get(), 0.5, gkl.get(), gdl.get(), N, V);
    const auto k = gkl.download();
    for (int64_t i = 0; i < N; ++i) EXPECT_NEAR(k[size_t(i)], kl.data<double>()[i], 1e-10) << "row " << i;
    EXPECT_EQ(k[4], 0.0);
    EXPECT_TRUE(close("dlogits", gdl.download(), vec(dl), kBf16Tol));
  }
}

// UNDIAL's lowering on a bf16 shard: bf16(x + value) at each target in the shard, exactly
// the CPU twin's f32 result rounded once.
TEST_F(CudaOps, AddAtTargetsMatchesCpuTwinRounded) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 300, V = 60, first = 20, Vr = 25;
  const auto x = round_bf16(randn(size_t(N * Vr), 3.0f));
  auto t = randint(size_t(N), int32_t(V));
  t[0] = ops::kIgnoreIndex;
  DeviceBuffer<bf16> gx(to_bf16(x));
  DeviceBuffer<int32_t> gt(t);
  cuda::add_at_targets(gx.get(), gt.get(), first, -2.0f, N, Vr);
  Tensor ref = host({N, Vr}, x);
  ops::add_at_targets_(ref, Tensor::from<int32_t>({N}, t), first, -2.0);
  EXPECT_TRUE(close("x", gx.download(), round_bf16(vec(ref)), 0.0));
}

// The Min-K%++ pieces (sum of exp with the difference in double, the mean and the centred
// second moment) against their CPU twins: the same double arithmetic per element, summed
// in another order and through the device's exp (1 ulp): relative 1e-12 of each row's sum
// of |terms| (bounded by the moment's own scale: |l| < 40 here).
TEST_F(CudaOps, SoftmaxMomentsMatchCpuTwins) {
  SCOPED_TRACE(seed_msg());
  // 500 takes the element-wise kernels, 496 (a multiple of 8) the 16-byte ones.
  for (const int64_t V : {int64_t(500), int64_t(496)}) {
    SCOPED_TRACE("V = " + std::to_string(V));
    const int64_t N = 19;
    const auto logits = round_bf16(randn(size_t(N * V), 4.0f));
    const Tensor L = host({N, V}, logits);
    Tensor mx = Tensor::empty({N}, DType::f32), se = Tensor::empty({N}, DType::f64);
    Tensor mu = Tensor::empty({N}, DType::f64), var = mu.clone(), none;
    ops::cross_entropy_shard_max(L, none, 0, V, mx, none);
    ops::cross_entropy_shard_sumexp(L, mx, se, true);
    ops::softmax_moment_shard(L, mx, se, none, mu);
    ops::softmax_moment_shard(L, mx, se, mu, var);
    DeviceBuffer<bf16> gl(to_bf16(logits));
    DeviceBuffer<float> gmx(vec(mx));
    DeviceBuffer<double> gse(static_cast<size_t>(N)), gmu(static_cast<size_t>(N)), gvar(static_cast<size_t>(N));
    DeviceBuffer<double> cpu_se(std::vector<double>(se.data<double>(), se.data<double>() + N));
    DeviceBuffer<double> cpu_mu(std::vector<double>(mu.data<double>(), mu.data<double>() + N));
    cuda::cross_entropy_shard_sumexp(gl.get(), gmx.get(), gse.get(), true, N, V);
    // The moments from the CPU's sum and mean, so each kernel is judged on its own.
    cuda::softmax_moment_shard(gl.get(), gmx.get(), cpu_se.get(), nullptr, gmu.get(), N, V);
    cuda::softmax_moment_shard(gl.get(), gmx.get(), cpu_se.get(), cpu_mu.get(), gvar.get(), N, V);
    const auto s = gse.download(), m = gmu.download(), v = gvar.download();
    for (int64_t i = 0; i < N; ++i) {
      EXPECT_NEAR(s[size_t(i)], se.data<double>()[i], 1e-12 * se.data<double>()[i]) << "row " << i;
      EXPECT_NEAR(m[size_t(i)], mu.data<double>()[i], 40e-12) << "row " << i;
      EXPECT_NEAR(v[size_t(i)], var.data<double>()[i], 1600e-12) << "row " << i;
    }
  }
}

// Straight from the definitions, in double.
void ref_softmax_log(const float* x, int64_t V, std::vector<double>& lp) {
  double m = -INFINITY, s = 0;
  for (int64_t j = 0; j < V; ++j) m = std::max(m, double(x[j]));
  for (int64_t j = 0; j < V; ++j) s += std::exp(double(x[j]) - m);
  lp.resize(static_cast<size_t>(V));
  for (int64_t j = 0; j < V; ++j) lp[size_t(j)] = double(x[j]) - m - std::log(s);
}

TEST_F(CudaOps, KlToReferenceAndItsGradientMatchDefinition) {
  SCOPED_TRACE(seed_msg());
  // A multiple of 8 takes the 16-byte kernels (4104 > 512 threads x 8: several accesses per
  // thread), 4105 the element-wise ones.
  for (const int64_t V : {int64_t(4105), int64_t(4104)}) {
    SCOPED_TRACE("V = " + std::to_string(V));
    const int64_t N = 13;
    const auto x = round_bf16(randn(size_t(N * V), 2.f)), r = round_bf16(randn(size_t(N * V), 2.f)),
               g0 = round_bf16(randn(size_t(N * V), 1e-3f));
    std::vector<float> row_scale(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) row_scale[size_t(i)] = i == 5 ? 0.f : 0.3f / float(N);
    std::vector<double> kl_ref(static_cast<size_t>(N)), g_ref(size_t(N * V)), g_acc(size_t(N * V));
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> lp, lq;
      ref_softmax_log(x.data() + i * V, V, lp);
      ref_softmax_log(r.data() + i * V, V, lq);
      double kl = 0;
      for (int64_t j = 0; j < V; ++j) {
        const double q = std::exp(lq[size_t(j)]), p = std::exp(lp[size_t(j)]);
        kl += q * (lq[size_t(j)] - lp[size_t(j)]);
        g_ref[size_t(i * V + j)] = row_scale[size_t(i)] * (p - q);
        g_acc[size_t(i * V + j)] = g_ref[size_t(i * V + j)] + g0[size_t(i * V + j)];
      }
      kl_ref[size_t(i)] = kl;
    }
    DeviceBuffer<bf16> gx(to_bf16(x)), gr(to_bf16(r)), gd(size_t(N * V)), gacc(to_bf16(g0));
    DeviceBuffer<float> gs(row_scale), gkl(static_cast<size_t>(N)), gkl2(static_cast<size_t>(N));
    cuda::kl_to_reference(gx.get(), gr.get(), gs.get(), gkl.get(), gd.get(), false, N, V);
    EXPECT_TRUE(close("kl", gkl.download(), kl_ref, kSumTol));
    EXPECT_TRUE(close("dlogits", gd.download(), g_ref, kBf16Tol));
    cuda::kl_to_reference(gx.get(), gr.get(), gs.get(), gkl2.get(), gacc.get(), true, N, V);
    EXPECT_TRUE(close("dlogits accumulated", gacc.download(), g_acc, kBf16Tol));
    // KL of a distribution with itself is zero.
    cuda::kl_to_reference(gx.get(), gx.get(), nullptr, gkl2.get(), nullptr, false, N, V);
    for (float k : gkl2.download()) EXPECT_NEAR(k, 0.f, 1e-5f);
  }
}

TEST_F(CudaOps, LogitMomentsMatchDefinition) {
  SCOPED_TRACE(seed_msg());
  const int64_t N = 11, V = 32000;
  auto x = round_bf16(randn(size_t(N * V), 2.f));
  for (int64_t j = 0; j < V; ++j) x[size_t(2 * V + j)] = j == 7 ? 30.f : 0.f;  // a peaked row
  std::vector<double> mu(static_cast<size_t>(N)), sigma(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    std::vector<double> lp;
    ref_softmax_log(x.data() + i * V, V, lp);
    double m = 0, var = 0;
    for (double l : lp) m += std::exp(l) * l;
    for (double l : lp) var += std::exp(l) * (l - m) * (l - m);
    mu[size_t(i)] = m;
    sigma[size_t(i)] = std::sqrt(var);
  }
  DeviceBuffer<bf16> gx(to_bf16(x));
  DeviceBuffer<float> gx32(x), gmu(static_cast<size_t>(N)), gsig(static_cast<size_t>(N)), gmu2(static_cast<size_t>(N)), gsig2(static_cast<size_t>(N));
  cuda::logit_moments(gx.get(), gmu.get(), gsig.get(), N, V);
  cuda::logit_moments(gx32.get(), gmu2.get(), gsig2.get(), N, V);
  EXPECT_TRUE(close("mu (bf16 logits)", gmu.download(), mu, kF32Tol));
  EXPECT_TRUE(close("sigma (bf16 logits)", gsig.download(), sigma, kF32Tol));
  EXPECT_TRUE(close("mu (f32 logits)", gmu2.download(), mu, kF32Tol));
  EXPECT_TRUE(close("sigma (f32 logits)", gsig2.download(), sigma, kF32Tol));
}

// ---- optimizer ---------------------------------------------------------------------
TEST_F(CudaOps, MultiTensorAdamWMatchesCpuOverSteps) {
  SCOPED_TRACE(seed_msg());
  // Five shapes, then 50 small tensors: more than one launch's batch of 48 (kBatch).
  std::vector<int64_t> sizes{1, 1000, 4096, 70001, 333};
  std::vector<float> decays{0.1f, 0.1f, 0.f, 0.1f, 0.f};
  for (int i = 0; i < 50; ++i) sizes.push_back(17 + 3 * i), decays.push_back(i % 2 ? 0.1f : 0.f);
  struct T {
    std::vector<float> p, m, v;
    Tensor P, M, V;
    DeviceBuffer<float> *dp, *dg, *dm, *dv;
    DeviceBuffer<bf16>* db;
  };
  std::vector<T> ts(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    const size_t n = size_t(sizes[i]);
    ts[i].P = host({sizes[i]}, randn(n));
    ts[i].M = Tensor::zeros({sizes[i]}, DType::f32);
    ts[i].V = Tensor::zeros({sizes[i]}, DType::f32);
    ts[i].dp = new DeviceBuffer<float>(vec(ts[i].P));
    ts[i].dg = new DeviceBuffer<float>(n);
    ts[i].dm = new DeviceBuffer<float>(std::vector<float>(n, 0.f));
    ts[i].dv = new DeviceBuffer<float>(std::vector<float>(n, 0.f));
    ts[i].db = new DeviceBuffer<bf16>(n);
  }
  const float clip = 0.5f;
  for (int64_t step = 1; step <= 3; ++step) {
    const cuda::AdamWHyper h{1e-2, 0.9, 0.95, 1e-8, step};
    std::vector<cuda::AdamWTensor> list;
    DeviceBuffer<float> coef(std::vector<float>{clip});
    for (size_t i = 0; i < ts.size(); ++i) {
      const auto g = randn(size_t(sizes[i]));
      ts[i].dg->upload(g);
      list.push_back({ts[i].dp->get(), ts[i].dg->get(), ts[i].dm->get(), ts[i].dv->get(), ts[i].db->get(), sizes[i],
                      decays[i]});
      std::vector<float> gs(g);
      for (auto& x : gs) x *= clip;
      ops::adamw_update(ts[i].P, host({sizes[i]}, gs), ts[i].M, ts[i].V, {1e-2, 0.9, 0.95, 1e-8, decays[i], step});
    }
    cuda::adamw_multi(list.data(), int(list.size()), h, coef.get());
    for (size_t i = 0; i < ts.size(); ++i) {
      const std::string what = "tensor " + std::to_string(i) + " step " + std::to_string(step);
      // Bit for bit: the kernel repeats the CPU twin's f32 operations one by one.
      EXPECT_TRUE(close((what + " p").c_str(), ts[i].dp->download(), vec(ts[i].P), 0.0));
      EXPECT_TRUE(close((what + " m").c_str(), ts[i].dm->download(), vec(ts[i].M), 0.0));
      EXPECT_TRUE(close((what + " v").c_str(), ts[i].dv->download(), vec(ts[i].V), 0.0));
      EXPECT_TRUE(close((what + " bf16 p").c_str(), ts[i].db->download(), round_bf16(vec(ts[i].P)), 0.0));
    }
  }
  for (auto& t : ts) {
    delete t.dp, delete t.dg, delete t.dm, delete t.dv, delete t.db;
  }
}

// SGD with momentum and weight decay, first step (the buffer takes the gradient) and two
// more: each operation rounded in f32 as the CPU twin rounds it, so bit for bit.
TEST_F(CudaOps, SgdMatchesCpuTwinBitForBit) {
  SCOPED_TRACE(seed_msg());
  const int64_t n = 70001;
  Tensor P = host({n}, randn(size_t(n))), B = Tensor::zeros({n}, DType::f32), P0 = host({n}, randn(size_t(n)));
  DeviceBuffer<float> dp(vec(P)), dbuf(static_cast<size_t>(n)), dp0(vec(P0)), dg(static_cast<size_t>(n));
  Tensor none;
  for (int step = 1; step <= 3; ++step) {
    const auto g = randn(size_t(n));
    dg.upload(g);
    const ops::SGDArgs a{3e-2, 0.9, 0.01, step == 1}, plain{3e-2, 0.0, 0.01, step == 1};
    ops::sgd_update(P, host({n}, g), B, a);
    ops::sgd_update(P0, host({n}, g), none, plain);
    cuda::sgd_update(dp.get(), dg.get(), dbuf.get(), n, 3e-2f, 0.9f, 0.01f, step == 1);
    cuda::sgd_update(dp0.get(), dg.get(), nullptr, n, 3e-2f, 0.f, 0.01f, step == 1);
    const auto p = dp.download(), b = dbuf.download(), p0 = dp0.download();
    EXPECT_EQ(0, std::memcmp(p.data(), P.data<float>(), size_t(n) * 4)) << "p, step " << step;
    EXPECT_EQ(0, std::memcmp(b.data(), B.data<float>(), size_t(n) * 4)) << "momentum, step " << step;
    EXPECT_EQ(0, std::memcmp(p0.data(), P0.data<float>(), size_t(n) * 4)) << "p without momentum, step " << step;
  }
}

TEST_F(CudaOps, GlobalGradNormIsDeterministicAndMatchesCpu) {
  SCOPED_TRACE(seed_msg());
  const std::vector<int64_t> sizes{7, 123457, 1 << 20, 4096};
  std::vector<DeviceBuffer<float>*> bufs;
  std::vector<const float*> ptrs;
  double ref = 0;
  for (int64_t n : sizes) {
    const auto g = randn(size_t(n), 1e-2f);
    ref += ops::sum_squares(host({n}, g));
    bufs.push_back(new DeviceBuffer<float>(g));
    ptrs.push_back(bufs.back()->get());
  }
  DeviceBuffer<double> partials(cuda::kNormPartials), s1(1), s2(1);
  DeviceBuffer<float> coef(1), norm(1), coef_off(1);
  cuda::sum_squares_multi(ptrs.data(), sizes.data(), int(sizes.size()), partials.get(), s1.get());
  cuda::sum_squares_multi(ptrs.data(), sizes.data(), int(sizes.size()), partials.get(), s2.get());
  const double a = s1.download()[0], b = s2.download()[0];
  EXPECT_NEAR(a, ref, 1e-10 * ref);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "two runs differ: " << a << " vs " << b;
  const float max_norm = float(std::sqrt(ref) / 4);
  cuda::clip_coefficient(s1.get(), max_norm, coef.get(), norm.get());
  cuda::clip_coefficient(s1.get(), 0.f, coef_off.get(), nullptr);
  EXPECT_NEAR(norm.download()[0], std::sqrt(ref), 1e-6 * std::sqrt(ref));
  EXPECT_NEAR(coef.download()[0], max_norm / (std::sqrt(ref) + 1e-6), 1e-6);
  EXPECT_EQ(coef_off.download()[0], 1.f);
  // A non-finite norm gives a NaN coefficient (torch's clamp keeps it), not 1.
  for (double bad : {double(INFINITY), double(NAN)}) {
    DeviceBuffer<double> sb(std::vector<double>{bad});
    cuda::clip_coefficient(sb.get(), max_norm, coef.get(), nullptr);
    EXPECT_TRUE(std::isnan(coef.download()[0])) << "sum of squares " << bad;
  }
  for (auto* p : bufs) delete p;
}

TEST_F(CudaOps, ScaleMultipliesInPlace) {
  const auto x = randn(1001);
  DeviceBuffer<float> d(x);
  cuda::scale(d.get(), 1001, -0.25f);
  std::vector<float> r(x);
  for (auto& v : r) v *= -0.25f;
  EXPECT_TRUE(close("x", d.download(), r, 0.0));
}

// ---- arena -------------------------------------------------------------------------
TEST_F(CudaOps, ArenaAlignsReleasesAndRefusesOverflow) {
  cuda::Arena a(1 << 20);
  const size_t m0 = a.mark();
  char* p1 = static_cast<char*>(a.alloc(10, "x"));
  char* p2 = static_cast<char*>(a.alloc(1000, "y"));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p1) % cuda::Arena::kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p2) % cuda::Arena::kAlign, 0u);
  EXPECT_EQ(p2 - p1, ptrdiff_t(cuda::Arena::kAlign));
  const size_t m1 = a.mark();
  a.alloc_n<float>(1000, "z");
  a.release(m1);
  EXPECT_EQ(a.used(), m1);
  EXPECT_EQ(static_cast<char*>(a.alloc(16, "w")), p1 + 256 + 1024);
  a.release(m0);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_GE(a.peak(), m1 + 4096);
  try {
    a.alloc(size_t(2) << 20, "activations");
    FAIL() << "overflow not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("activations"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lethe
