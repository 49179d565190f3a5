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
  Tensor cos, sin;
  ops::rope_tables(ops::rope_inv_freq(D, 5e6, {}), T, DType::f32, cos, sin);

  // ---- CPU reference, fp32 --------------------------------------------------------------
  auto H32 = [](const Shape& s, const std::vector<float>& v) { return Tensor::from<float>(s, v); };
  auto E = [](const Shape& s) { return Tensor::zeros(s, DType::f32); };
  const Tensor X = H32({N, C}, x), WQ = H32({HD, C}, wq), WK = H32({KD, C}, wk), WV = H32({KD, C}, wv),
               WO = H32({C, HD}, wo), WG = H32({F, C}, wg), WU = H32({F, C}, wu), WD = H32({C, F}, wd),
               N1 = H32({C}, n1), N2 = H32({C}, n2);
  Tensor h1 = E({N, C}), r1 = E({N}), q = E({N, HD}), k = E({N, KD}), v = E({N, KD});
  ops::rmsnorm_forward(X, N1, eps, h1, r1);
  ops::linear_forward(h1, WQ, q);
  ops::linear_forward(h1, WK, k);
  ops::linear_forward(h1, WV, v);
  Tensor q4 = q.reshape({B, T, H, D}), k4 = k.reshape({B, T, KV, D}), v4 = v.reshape({B, T, KV, D});
  ops::rope_forward(q4, cos, sin, q4);
  ops::rope_forward(k4, cos, sin, k4);
  Tensor o4 = E({B, T, H, D}), lse = E({B, H, T}), a = E({N, C});
  ops::attention_forward(q4, k4, v4, scale, o4, lse);
  const Tensor o = o4.reshape({N, HD});
  ops::linear_forward(o, WO, a);
  Tensor mid = X.clone();
  for (int64_t i = 0; i < N * C; ++i) mid.data<float>()[i] += a.data<float>()[i];
  Tensor h2 = E({N, C}), r2 = E({N}), g = E({N, F}), u = E({N, F}), act = E({N, F}), m = E({N, C});
  ops::rmsnorm_forward(mid, N2, eps, h2, r2);
  ops::linear_forward(h2, WG, g);
  ops::linear_forward(h2, WU, u);
  ops::swiglu_forward(g, u, act);
  ops::linear_forward(act, WD, m);
  Tensor y = mid.clone();
  for (int64_t i = 0; i < N * C; ++i) y.data<float>()[i] += m.data<float>()[i];
  // backward
  const Tensor DY = H32({N, C}, dy);
  Tensor dact = E({N, F}), dg = E({N, F}), du = E({N, F}), dh = E({N, C}), dr = DY.clone();
  Tensor gWQ = E({HD, C}), gWK = E({KD, C}), gWV = E({KD, C}), gWO = E({C, HD}), gWG = E({F, C}), gWU = E({F, C}),
         gWD = E({C, F}), gN1 = E({C}), gN2 = E({C});
  ops::linear_backward(dr, act, WD, &dact, false, &gWD);
  ops::swiglu_backward(dact, g, u, dg, du);
  ops::linear_backward(dg, h2, WG, &dh, false, &gWG);
  ops::linear_backward(du, h2, WU, &dh, true, &gWU);
  ops::rmsnorm_backward(dh, mid, N2, r2, dr, true, gN2);
  Tensor dO = E({N, HD});
  ops::linear_backward(dr, o, WO, &dO, false, &gWO);
  Tensor dq4 = E({B, T, H, D}), dk4 = E({B, T, KV, D}), dv4 = E({B, T, KV, D});
  ops::attention_backward(dO.reshape({B, T, H, D}), q4, k4, v4, o4, lse, scale, dq4, dk4, dv4);
  ops::rope_backward(dq4, cos, sin, dq4);
  ops::rope_backward(dk4, cos, sin, dk4);
  ops::linear_backward(dq4.reshape({N, HD}), h1, WQ, &dh, false, &gWQ);
  ops::linear_backward(dk4.reshape({N, KD}), h1, WK, &dh, true, &gWK);
  ops::linear_backward(dv4.reshape({N, KD}), h1, WV, &dh, true, &gWV);
  ops::rmsnorm_backward(dh, X, N1, r1, dr, true, gN1);

  // ---- GPU: bf16 activations, fp32 weight gradients ------------------------------------
  cuda::GemmContext* ctx = cuda::gemm_create();
  DeviceBuffer<bf16> dX(to_bf16(x)), dWQ(to_bf16(wq)), dWK(to_bf16(wk)), dWV(to_bf16(wv)), dWO(to_bf16(wo)),
      dWG(to_bf16(wg)), dWU(to_bf16(wu)), dWD(to_bf16(wd)), dN1(to_bf16(n1)), dN2(to_bf16(n2));
  DeviceBuffer<float> dcos(vec(cos)), dsin(vec(sin));
  DeviceBuffer<bf16> gh1(size_t(N * C)), gq(size_t(N * HD)), gk(size_t(N * KD)), gv(size_t(N * KD)),
      go(size_t(N * HD)), gtmp(size_t(N * C)), gmid(size_t(N * C)), gh2(size_t(N * C)), gg(size_t(N * F)),
      gu(size_t(N * F)), gact(size_t(N * F)), gy(size_t(N * C)), gnorm_unused(size_t(N * C));
  DeviceBuffer<float> gr1(static_cast<size_t>(N)), gr2(static_cast<size_t>(N)), gr3(static_cast<size_t>(N)),
      glse(size_t(B * H * T));
  cuda::rmsnorm_forward(dX.get(), dN1.get(), eps, gh1.get(), gr1.get(), N, C);
  cuda::linear_forward(ctx, gh1.get(), dWQ.get(), gq.get(), N, C, HD);
  cuda::linear_forward(ctx, gh1.get(), dWK.get(), gk.get(), N, C, KD);
  cuda::linear_forward(ctx, gh1.get(), dWV.get(), gv.get(), N, C, KD);
  cuda::rope_forward(gq.get(), dcos.get(), dsin.get(), gq.get(), B, T, H, D);
  cuda::rope_forward(gk.get(), dcos.get(), dsin.get(), gk.get(), B, T, KV, D);
  cuda::attention_forward(gq.get(), gk.get(), gv.get(), scale, go.get(), glse.get(), B, T, H, KV, D);
  cuda::linear_forward(ctx, go.get(), dWO.get(), gtmp.get(), N, HD, C);
  cuda::residual_rmsnorm_forward(dX.get(), gtmp.get(), gmid.get(), dN2.get(), eps, gh2.get(), gr2.get(), N, C);
  cuda::linear_forward(ctx, gh2.get(), dWG.get(), gg.get(), N, C, F);
  cuda::linear_forward(ctx, gh2.get(), dWU.get(), gu.get(), N, C, F);
  cuda::swiglu_forward(gg.get(), gu.get(), gact.get(), N * F);
  cuda::linear_forward(ctx, gact.get(), dWD.get(), gtmp.get(), N, F, C);
  // The fused add-and-norm does the final residual add in place; its normalised output is
  // unused.
  cuda::copy_device(gy.get(), gmid.get(), size_t(N * C) * 2);
  cuda::residual_rmsnorm_forward(gy.get(), gtmp.get(), gy.get(), dN2.get(), eps, gnorm_unused.get(), gr3.get(), N, C);
  expect_close("y", gy.download(), vec(y));
  expect_close("lse", glse.download(), vec(lse));

  DeviceBuffer<bf16> gdr(to_bf16(dy)), gdact(size_t(N * F)), gdg(size_t(N * F)), gdu(size_t(N * F)),
      gdh(size_t(N * C)), gdO(size_t(N * HD)), gdq(size_t(N * HD)), gdk(size_t(N * KD)), gdv(size_t(N * KD));
  DeviceBuffer<float> zWQ(std::vector<float>(wq.size(), 0.f)), zWK(std::vector<float>(wk.size(), 0.f)),
      zWV(std::vector<float>(wv.size(), 0.f)), zWO(std::vector<float>(wo.size(), 0.f)),
      zWG(std::vector<float>(wg.size(), 0.f)), zWU(std::vector<float>(wu.size(), 0.f)),
      zWD(std::vector<float>(wd.size(), 0.f)), zN1(std::vector<float>(n1.size(), 0.f)),
      zN2(std::vector<float>(n2.size(), 0.f));
  DeviceBuffer<char> ws(cuda::attention_backward_workspace_bytes(B, T, H, D));
  cuda::linear_backward(ctx, gdr.get(), gact.get(), dWD.get(), gdact.get(), false, zWD.get(), N, F, C);
  cuda::swiglu_backward(gdact.get(), gg.get(), gu.get(), gdg.get(), gdu.get(), N * F);
  cuda::linear_backward(ctx, gdg.get(), gh2.get(), dWG.get(), gdh.get(), false, zWG.get(), N, C, F);
  cuda::linear_backward(ctx, gdu.get(), gh2.get(), dWU.get(), gdh.get(), true, zWU.get(), N, C, F);
  cuda::rmsnorm_backward(gdh.get(), gmid.get(), dN2.get(), gr2.get(), gdr.get(), true, zN2.get(), N, C);
  cuda::linear_backward(ctx, gdr.get(), go.get(), dWO.get(), gdO.get(), false, zWO.get(), N, HD, C);
  cuda::attention_backward(gdO.get(), gq.get(), gk.get(), gv.get(), go.get(), glse.get(), scale, gdq.get(), gdk.get(),
                           gdv.get(), ws.get(), B, T, H, KV, D);
  cuda::rope_backward(gdq.get(), dcos.get(), dsin.get(), gdq.get(), B, T, H, D);
  cuda::rope_backward(gdk.get(), dcos.get(), dsin.get(), gdk.get(), B, T, KV, D);
  cuda::linear_backward(ctx, gdq.get(), gh1.get(), dWQ.get(), gdh.get(), false, zWQ.get(), N, C, HD);
  cuda::linear_backward(ctx, gdk.get(), gh1.get(), dWK.get(), gdh.get(), true, zWK.get(), N, C, KD);
  cuda::linear_backward(ctx, gdv.get(), gh1.get(), dWV.get(), gdh.get(), true, zWV.get(), N, C, KD);
  cuda::rmsnorm_backward(gdh.get(), dX.get(), dN1.get(), gr1.get(), gdr.get(), true, zN1.get(), N, C);

  expect_close("dx", gdr.download(), vec(dr));
  expect_close("dWq", zWQ.download(), vec(gWQ));
  expect_close("dWk", zWK.download(), vec(gWK));
  expect_close("dWv", zWV.download(), vec(gWV));
  expect_close("dWo", zWO.download(), vec(gWO));
  expect_close("dWgate", zWG.download(), vec(gWG));
  expect_close("dWup", zWU.download(), vec(gWU));
  expect_close("dWdown", zWD.download(), vec(gWD));
  expect_close("dnorm1", zN1.download(), vec(gN1));
  expect_close("dnorm2", zN2.download(), vec(gN2));
  cuda::gemm_destroy(ctx);
}

}  // namespace
}  // namespace lethe
