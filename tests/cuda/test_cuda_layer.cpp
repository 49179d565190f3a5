// One Llama block (RMSNorm, q/k/v, RoPE, GQA flash attention, o, residual, RMSNorm,
// SwiGLU MLP, residual) forward and backward at 7B width (Yi-6B: dim 4096, 32 query /
// 4 kv heads, ffn 11008), GPU against the same composition of CPU ops in fp32 on the
// same bf16-rounded inputs and weights. The GPU rounds every activation to bf16, so the
// errors of ten ops compound; tolerances per output: relative L2 error
// ||gpu - ref|| / ||ref|| <= 2e-2 and scaled max error <= 6e-2. NaN never passes.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"
#include "kernels/linear.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/cuda/cuda_test_util.h"

namespace lethe {
namespace {
using namespace lethe::cudatest;
constexpr double kL2Tol = 2e-2, kMaxTol = 6e-2;

std::vector<float> vec(const Tensor& t) { return std::vector<float>(t.data<float>(), t.data<float>() + t.numel()); }

template <typename G>
void expect_close(const char* what, const std::vector<G>& gpu, const std::vector<float>& ref) {
  std::vector<float> g(gpu.size());
  for (size_t i = 0; i < g.size(); ++i) {
    if constexpr (std::is_same_v<G, bf16>) g[i] = bf16_to_float(gpu[i]);
    else g[i] = gpu[i];
  }
  EXPECT_TRUE(close(what, g, ref, kMaxTol));
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size() && i < ref.size(); ++i) {
    num += (double(g[i]) - ref[i]) * (double(g[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), kL2Tol) << what << ": relative L2 error";
}

class CudaLayer : public GpuTest {};

TEST_F(CudaLayer, SevenBWidthBlockForwardAndBackwardMatchCpu) {
  SCOPED_TRACE(seed_msg());
  const int64_t B = 1, T = 256, C = 4096, H = 32, KV = 4, D = C / H, F = 11008, N = B * T;
  const int64_t HD = H * D, KD = KV * D;
  const float eps = 1e-5f, scale = 1.f / std::sqrt(float(D));
  // Weights at the init scale of a trained 7B model's layers (std 0.02), norms near 1.
  const auto x = round_bf16(randn(size_t(N * C))), dy = round_bf16(randn(size_t(N * C), 1e-2f));
  const auto wq = round_bf16(randn(size_t(HD * C), 0.02f)), wk = round_bf16(randn(size_t(KD * C), 0.02f)),
             wv = round_bf16(randn(size_t(KD * C), 0.02f)), wo = round_bf16(randn(size_t(C * HD), 0.02f)),
             wg = round_bf16(randn(size_t(F * C), 0.02f)), wu = round_bf16(randn(size_t(F * C), 0.02f)),
             wd = round_bf16(randn(size_t(C * F), 0.02f)), n1 = round_bf16(randn(size_t(C), 0.1f, 1.f)),
             n2 = round_bf16(randn(size_t(C), 0.1f, 1.f));
  // The model's fused weights: [W_q; W_k; W_v] ([HD + 2 KD, C]) and [W_gate; W_up] ([2F, C]).
  std::vector<float> wqkv = wq, wgu = wg;
  wqkv.insert(wqkv.end(), wk.begin(), wk.end());
  wqkv.insert(wqkv.end(), wv.begin(), wv.end());
  wgu.insert(wgu.end(), wu.begin(), wu.end());
  const int64_t QKV = HD + 2 * KD;
  Tensor cos, sin;
  ops::rope_tables(ops::rope_inv_freq(D, 5e6, {}), T, DType::f32, cos, sin);

  // ---- CPU reference, fp32 --------------------------------------------------------------
  auto H32 = [](const Shape& s, const std::vector<float>& v) { return Tensor::from<float>(s, v); };
  auto E = [](const Shape& s) { return Tensor::zeros(s, DType::f32); };
  const Tensor X = H32({N, C}, x), WQKV = H32({QKV, C}, wqkv),
               WO = H32({C, HD}, wo), WGU = H32({2 * F, C}, wgu), WD = H32({C, F}, wd),
               N1 = H32({C}, n1), N2 = H32({C}, n2);
  Tensor h1 = E({N, C}), r1 = E({N}), qkv = E({N, QKV});
  Tensor q4 = E({B, T, H, D}), k4 = E({B, T, KV, D}), v4 = E({B, T, KV, D});
  ops::rmsnorm_forward(X, N1, eps, h1, r1);
  ops::linear_forward(h1, WQKV, qkv);
  ops::qkv_split_rope(qkv, cos, sin, q4, k4, v4);
  Tensor o4 = E({B, T, H, D}), lse = E({B, H, T}), a = E({N, C});
  ops::attention_forward(q4, k4, v4, scale, o4, lse);
  const Tensor o = o4.reshape({N, HD});
  ops::linear_forward(o, WO, a);
  Tensor mid = X.clone();
  for (int64_t i = 0; i < N * C; ++i) mid.data<float>()[i] += a.data<float>()[i];
  Tensor h2 = E({N, C}), r2 = E({N}), gu = E({N, 2 * F}), act = E({N, F}), m = E({N, C});
  ops::rmsnorm_forward(mid, N2, eps, h2, r2);
  ops::linear_forward(h2, WGU, gu);
  ops::swiglu_forward(gu, act);
  ops::linear_forward(act, WD, m);
  Tensor y = mid.clone();
  for (int64_t i = 0; i < N * C; ++i) y.data<float>()[i] += m.data<float>()[i];
  // backward
  const Tensor DY = H32({N, C}, dy);
  Tensor dact = E({N, F}), dgu = E({N, 2 * F}), dh = E({N, C}), dr = DY.clone();
  Tensor gWQKV = E({QKV, C}), gWO = E({C, HD}), gWGU = E({2 * F, C}),
         gWD = E({C, F}), gN1 = E({C}), gN2 = E({C});
  ops::linear_backward(dr, act, WD, &dact, false, &gWD);
  ops::swiglu_backward(dact, gu, dgu);
  ops::linear_backward(dgu, h2, WGU, &dh, false, &gWGU);
  ops::rmsnorm_backward(dh, mid, N2, r2, dr, true, gN2);
  Tensor dO = E({N, HD});
  ops::linear_backward(dr, o, WO, &dO, false, &gWO);
  Tensor dq4 = E({B, T, H, D}), dk4 = E({B, T, KV, D}), dv4 = E({B, T, KV, D});
  ops::attention_backward(dO.reshape({B, T, H, D}), q4, k4, v4, o4, lse, scale, dq4, dk4, dv4);
  Tensor dqkv = E({N, QKV});
  ops::qkv_merge_rope_backward(dq4, dk4, dv4, cos, sin, dqkv);
  ops::linear_backward(dqkv, h1, WQKV, &dh, false, &gWQKV);
  ops::rmsnorm_backward(dh, X, N1, r1, dr, true, gN1);

  // ---- GPU: bf16 activations, fp32 weight gradients ------------------------------------
  cuda::GemmContext* ctx = cuda::gemm_create();
  DeviceBuffer<bf16> dX(to_bf16(x)), dWQKV(to_bf16(wqkv)), dWO(to_bf16(wo)),
      dWGU(to_bf16(wgu)), dWD(to_bf16(wd)), dN1(to_bf16(n1)), dN2(to_bf16(n2));
  DeviceBuffer<float> dcos(vec(cos)), dsin(vec(sin));
  DeviceBuffer<bf16> gh1(size_t(N * C)), gqkv(size_t(N * QKV)), gq(size_t(N * HD)), gk(size_t(N * KD)), gv(size_t(N * KD)),
      go(size_t(N * HD)), gtmp(size_t(N * C)), gmid(size_t(N * C)), gh2(size_t(N * C)), ggu(size_t(N * 2 * F)),
      gact(size_t(N * F)), gy(size_t(N * C)), gnorm_unused(size_t(N * C));
  DeviceBuffer<float> gr1(static_cast<size_t>(N)), gr2(static_cast<size_t>(N)), gr3(static_cast<size_t>(N)),
      glse(size_t(B * H * T));
  cuda::rmsnorm_forward(dX.get(), dN1.get(), eps, gh1.get(), gr1.get(), N, C);
  cuda::linear_forward(ctx, gh1.get(), dWQKV.get(), gqkv.get(), N, C, QKV);
  cuda::qkv_split_rope(gqkv.get(), dcos.get(), dsin.get(), gq.get(), gk.get(), gv.get(), B, T, H, KV, D);
  cuda::attention_forward(gq.get(), gk.get(), gv.get(), scale, go.get(), glse.get(), B, T, H, KV, D);
  cuda::linear_forward(ctx, go.get(), dWO.get(), gtmp.get(), N, HD, C);
  cuda::residual_rmsnorm_forward(dX.get(), gtmp.get(), gmid.get(), dN2.get(), eps, gh2.get(), gr2.get(), N, C);
  cuda::linear_forward(ctx, gh2.get(), dWGU.get(), ggu.get(), N, C, 2 * F);
  cuda::swiglu_forward(ggu.get(), gact.get(), N, F);
  cuda::linear_forward(ctx, gact.get(), dWD.get(), gtmp.get(), N, F, C);
  // The fused add-and-norm does the final residual add in place; its normalised output is
  // unused.
  cuda::copy_device(gy.get(), gmid.get(), size_t(N * C) * 2);
  cuda::residual_rmsnorm_forward(gy.get(), gtmp.get(), gy.get(), dN2.get(), eps, gnorm_unused.get(), gr3.get(), N, C);
  expect_close("y", gy.download(), vec(y));
  expect_close("lse", glse.download(), vec(lse));

  DeviceBuffer<bf16> gdr(to_bf16(dy)), gdact(size_t(N * F)), gdgu(size_t(N * 2 * F)),
      gdh(size_t(N * C)), gdO(size_t(N * HD)), gdq(size_t(N * HD)), gdk(size_t(N * KD)), gdv(size_t(N * KD));
  DeviceBuffer<float> zWQKV(std::vector<float>(wqkv.size(), 0.f)), zWO(std::vector<float>(wo.size(), 0.f)),
      zWGU(std::vector<float>(wgu.size(), 0.f)),
      zWD(std::vector<float>(wd.size(), 0.f)), zN1(std::vector<float>(n1.size(), 0.f)),
      zN2(std::vector<float>(n2.size(), 0.f));
  DeviceBuffer<char> ws(cuda::attention_backward_workspace_bytes(B, T, H, D));
  cuda::linear_backward(ctx, gdr.get(), gact.get(), dWD.get(), gdact.get(), false, zWD.get(), N, F, C);
  cuda::swiglu_backward(gdact.get(), ggu.get(), gdgu.get(), N, F);
  cuda::linear_backward(ctx, gdgu.get(), gh2.get(), dWGU.get(), gdh.get(), false, zWGU.get(), N, C, 2 * F);
  cuda::rmsnorm_backward(gdh.get(), gmid.get(), dN2.get(), gr2.get(), gdr.get(), true, zN2.get(), N, C);
  cuda::linear_backward(ctx, gdr.get(), go.get(), dWO.get(), gdO.get(), false, zWO.get(), N, HD, C);
  cuda::attention_backward(gdO.get(), gq.get(), gk.get(), gv.get(), go.get(), glse.get(), scale, gdq.get(), gdk.get(),
                           gdv.get(), ws.get(), B, T, H, KV, D);
  cuda::qkv_merge_rope_backward(gdq.get(), gdk.get(), gdv.get(), dcos.get(), dsin.get(), gqkv.get(), B, T, H, KV, D);
  cuda::linear_backward(ctx, gqkv.get(), gh1.get(), dWQKV.get(), gdh.get(), false, zWQKV.get(), N, C, QKV);
  cuda::rmsnorm_backward(gdh.get(), dX.get(), dN1.get(), gr1.get(), gdr.get(), true, zN1.get(), N, C);

  expect_close("dx", gdr.download(), vec(dr));
  // Each weight's rows of the fused gradient, judged at its own scale.
  const std::vector<float> dwqkv = zWQKV.download(), rwqkv = vec(gWQKV);
  auto rows = [C](const std::vector<float>& v, int64_t r0, int64_t r1) {
    return std::vector<float>(v.begin() + std::ptrdiff_t(r0 * C), v.begin() + std::ptrdiff_t(r1 * C));
  };
  expect_close("dWq", rows(dwqkv, 0, HD), rows(rwqkv, 0, HD));
  expect_close("dWk", rows(dwqkv, HD, HD + KD), rows(rwqkv, HD, HD + KD));
  expect_close("dWv", rows(dwqkv, HD + KD, QKV), rows(rwqkv, HD + KD, QKV));
  expect_close("dWo", zWO.download(), vec(gWO));
  const std::vector<float> dwgu = zWGU.download(), rwgu = vec(gWGU);
  expect_close("dWgate", rows(dwgu, 0, F), rows(rwgu, 0, F));
  expect_close("dWup", rows(dwgu, F, 2 * F), rows(rwgu, F, 2 * F));
  expect_close("dWdown", zWD.download(), vec(gWD));
  expect_close("dnorm1", zN1.download(), vec(gN1));
  expect_close("dnorm2", zN2.download(), vec(gN2));
  cuda::gemm_destroy(ctx);
}

}  // namespace
}  // namespace lethe
