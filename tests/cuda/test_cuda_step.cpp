// A whole GA+GD forget+retain step on the tiny model's shape (dim 64, 4 query / 2 kv
// heads, head_dim 16, ffn 176, vocabulary 256, 2 layers), as tools/bench/gpu_step.h runs it
// at 7B width, against the same step composed from the CPU ops in fp32 on the same
// bf16-rounded weights, batch, token weights and RoPE tables. Checked: per-token
// log-probs and the weighted loss (relative L2 <= 1e-2, scaled max <= 3e-2), every
// gradient (relative L2 <= 3e-2, scaled max <= 1e-1: bf16 activations through two
// layers), the global grad norm (1e-2 relative), and the AdamW update given the GPU's
// own gradients and clip coefficient (scaled max error of the update <= 2e-2).
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"
#include "kernels/optim.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/cuda/cuda_test_util.h"
#include "tools/bench/gpu_step.h"

namespace lethe {
namespace {
using namespace lethe::cudatest;

template <typename T>
std::vector<T> download(const T* p, int64_t n) {
  cuda::synchronize();
  std::vector<T> v(static_cast<size_t>(n));
  cuda::copy_to_host(v.data(), p, v.size() * sizeof(T));
  return v;
}
std::vector<float> vec(const Tensor& t) { return std::vector<float>(t.data<float>(), t.data<float>() + t.numel()); }

void expect_close(const std::string& what, const std::vector<float>& g, const std::vector<float>& ref, double l2_tol,
                  double max_tol) {
  EXPECT_TRUE(close(what.c_str(), g, ref, max_tol));
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size() && i < ref.size(); ++i) {
    num += (double(g[i]) - ref[i]) * (double(g[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), l2_tol) << what << ": relative L2 error";
}

class CudaStep : public GpuTest {};

TEST_F(CudaStep, TinyModelForgetRetainStepMatchesCpuOps) {
  const bench::Model tiny{"tiny", 64, 4, 2, 176, 256, 1e4};
  const int64_t L = 2, B = 2, T = 64;
  bench::Step st(tiny, L, B, T);
  cuda::Arena arena(st.fixed_bytes() + size_t(L) * (size_t(st.layer_params()) * 18 + st.activation_bytes_per_layer()));
  st.build(arena, seed_);
  SCOPED_TRACE(seed_msg());
  const int64_t N = st.N, C = tiny.C, H = tiny.H, KV = tiny.KV, D = st.D, F = tiny.F, V = tiny.V;
  const int64_t HD = H * D, KD = KV * D;
  const float eps = 1e-5f, scale = 1.f / std::sqrt(float(D));

  const auto master0 = download(st.master, st.n_params);
  const auto ids = download(st.ids, N), tg = download(st.tg, N);
  const auto tw = download(st.tw, N);
  const Tensor cos = Tensor::from<float>({T, D / 2}, download(st.cos, T * D / 2)),
               sin = Tensor::from<float>({T, D / 2}, download(st.sin, T * D / 2));
  st.forward_backward();
  const auto lp_gpu = download(st.lp, N);
  const auto grad_gpu = download(st.grad, st.n_params);
  const double loss_gpu = download(st.loss, 1)[0];
  st.optimizer_step(1);
  const auto master1 = download(st.master, st.n_params);
  const float norm_gpu = download(st.norm, 1)[0], coef_gpu = download(st.coef, 1)[0];

  // ---- the same step on the CPU, fp32 ops on the bf16-rounded weights ---------------------
  auto W = [&](bench::Param p, const Shape& s) {
    std::vector<float> v(master0.begin() + p.off, master0.begin() + p.off + p.n);
    return Tensor::from<float>(s, round_bf16(v));
  };
  auto E = [](const Shape& s) { return Tensor::zeros(s, DType::f32); };
  auto add = [](Tensor& a, const Tensor& b) {
    for (int64_t i = 0; i < a.numel(); ++i) a.data<float>()[i] += b.data<float>()[i];
  };
  const Tensor IDS = Tensor::from<int32_t>({N}, ids), TG = Tensor::from<int32_t>({N}, tg),
               TW = Tensor::from<float>({N}, tw);
  struct Acts {
    Tensor res, h1, r1, q4, k4, v4, o4, lse, mid, h2, r2, g, u, act;
  };
  std::vector<Acts> acts(static_cast<size_t>(L));
  Tensor res = E({N, C});
  ops::embedding_forward(IDS, W(st.emb, {V, C}), res);
  for (int64_t l = 0; l < L; ++l) {
    const auto& y = st.layers[size_t(l)];
    Acts& a = acts[size_t(l)];
    a.res = res.clone();
    a.h1 = E({N, C}), a.r1 = E({N});
    ops::rmsnorm_forward(a.res, W(y.n1, {C}), eps, a.h1, a.r1);
    Tensor q = E({N, HD}), k = E({N, KD}), v = E({N, KD});
    ops::linear_forward(a.h1, W(y.wq, {HD, C}), q);
    ops::linear_forward(a.h1, W(y.wk, {KD, C}), k);
    ops::linear_forward(a.h1, W(y.wv, {KD, C}), v);
    a.q4 = q.reshape({B, T, H, D}), a.k4 = k.reshape({B, T, KV, D}), a.v4 = v.reshape({B, T, KV, D});
    ops::rope_forward(a.q4, cos, sin, a.q4);
    ops::rope_forward(a.k4, cos, sin, a.k4);
    a.o4 = E({B, T, H, D}), a.lse = E({B, H, T});
    ops::attention_forward(a.q4, a.k4, a.v4, scale, a.o4, a.lse);
    Tensor att = E({N, C});
    ops::linear_forward(a.o4.reshape({N, HD}), W(y.wo, {C, HD}), att);
    a.mid = a.res.clone();
    add(a.mid, att);
    a.h2 = E({N, C}), a.r2 = E({N}), a.g = E({N, F}), a.u = E({N, F}), a.act = E({N, F});
    ops::rmsnorm_forward(a.mid, W(y.n2, {C}), eps, a.h2, a.r2);
    ops::linear_forward(a.h2, W(y.wg, {F, C}), a.g);
    ops::linear_forward(a.h2, W(y.wu, {F, C}), a.u);
    ops::swiglu_forward(a.g, a.u, a.act);
    Tensor mlp = E({N, C});
    ops::linear_forward(a.act, W(y.wd, {C, F}), mlp);
    res = a.mid.clone();
    add(res, mlp);
  }
  Tensor hf = E({N, C}), rf = E({N}), logits = E({N, V}), lp = E({N}), lse = E({N}), dlogits = E({N, V});
  ops::rmsnorm_forward(res, W(st.nf, {C}), eps, hf, rf);
  ops::linear_forward(hf, W(st.lm, {V, C}), logits);
  const double loss = ops::cross_entropy_forward(logits, TG, TW, lp, lse);
  ops::cross_entropy_backward(logits, TG, TW, lse, 1.0, dlogits);
  expect_close("logprobs", lp_gpu, vec(lp), 1e-2, 3e-2);
  EXPECT_NEAR(loss_gpu, loss, 3e-2 * std::max(1.0, std::abs(loss)));

  std::vector<float> grad_ref(grad_gpu.size(), 0.f);
  auto G = [](bench::Param, const Shape& s) { return Tensor::zeros(s, DType::f32); };
  auto put = [&](bench::Param p, const Tensor& t) {
    std::copy(t.data<float>(), t.data<float>() + t.numel(), grad_ref.begin() + p.off);
  };
  Tensor dh = E({N, C}), dr = E({N, C});
  Tensor gLm = G(st.lm, {V, C}), gNf = G(st.nf, {C});
  ops::linear_backward(dlogits, hf, W(st.lm, {V, C}), &dh, false, &gLm);
  ops::rmsnorm_backward(dh, res, W(st.nf, {C}), rf, dr, false, gNf);
  put(st.lm, gLm), put(st.nf, gNf);
  for (int64_t l = L - 1; l >= 0; --l) {
    const auto& y = st.layers[size_t(l)];
    Acts& a = acts[size_t(l)];
    Tensor gWq = E({HD, C}), gWk = E({KD, C}), gWv = E({KD, C}), gWo = E({C, HD}), gWg = E({F, C}), gWu = E({F, C}),
           gWd = E({C, F}), gN1 = E({C}), gN2 = E({C});
    Tensor dact = E({N, F}), dg = E({N, F}), du = E({N, F}), dO = E({N, HD});
    ops::linear_backward(dr, a.act, W(y.wd, {C, F}), &dact, false, &gWd);
    ops::swiglu_backward(dact, a.g, a.u, dg, du);
    ops::linear_backward(dg, a.h2, W(y.wg, {F, C}), &dh, false, &gWg);
    ops::linear_backward(du, a.h2, W(y.wu, {F, C}), &dh, true, &gWu);
    ops::rmsnorm_backward(dh, a.mid, W(y.n2, {C}), a.r2, dr, true, gN2);
    ops::linear_backward(dr, a.o4.reshape({N, HD}), W(y.wo, {C, HD}), &dO, false, &gWo);
    Tensor dq4 = E({B, T, H, D}), dk4 = E({B, T, KV, D}), dv4 = E({B, T, KV, D});
    ops::attention_backward(dO.reshape({B, T, H, D}), a.q4, a.k4, a.v4, a.o4, a.lse, scale, dq4, dk4, dv4);
    ops::rope_backward(dq4, cos, sin, dq4);
    ops::rope_backward(dk4, cos, sin, dk4);
    ops::linear_backward(dq4.reshape({N, HD}), a.h1, W(y.wq, {HD, C}), &dh, false, &gWq);
    ops::linear_backward(dk4.reshape({N, KD}), a.h1, W(y.wk, {KD, C}), &dh, true, &gWk);
    ops::linear_backward(dv4.reshape({N, KD}), a.h1, W(y.wv, {KD, C}), &dh, true, &gWv);
    ops::rmsnorm_backward(dh, a.res, W(y.n1, {C}), a.r1, dr, true, gN1);
    put(y.wq, gWq), put(y.wk, gWk), put(y.wv, gWv), put(y.wo, gWo), put(y.wg, gWg), put(y.wu, gWu);
    put(y.wd, gWd), put(y.n1, gN1), put(y.n2, gN2);
  }
  Tensor gEmb = G(st.emb, {V, C});
  ops::embedding_backward(IDS, dr, gEmb);
  put(st.emb, gEmb);

  const char* names[] = {"wq", "wk", "wv", "wo", "wgate", "wup", "wdown", "norm1", "norm2"};
  for (int64_t l = 0; l < L; ++l) {
    const auto& y = st.layers[size_t(l)];
    const bench::Param ps[] = {y.wq, y.wk, y.wv, y.wo, y.wg, y.wu, y.wd, y.n1, y.n2};
    for (int i = 0; i < 9; ++i) {
      const auto& p = ps[i];
      expect_close("layer " + std::to_string(l) + " d" + names[i],
                   std::vector<float>(grad_gpu.begin() + p.off, grad_gpu.begin() + p.off + p.n),
                   std::vector<float>(grad_ref.begin() + p.off, grad_ref.begin() + p.off + p.n), 3e-2, 1e-1);
    }
  }
  const std::pair<const char*, bench::Param> globals[] = {
      {"dembedding", st.emb}, {"dfinal_norm", st.nf}, {"dlm_head", st.lm}};
  for (const auto& [name, p] : globals)
    expect_close(name, std::vector<float>(grad_gpu.begin() + p.off, grad_gpu.begin() + p.off + p.n),
                 std::vector<float>(grad_ref.begin() + p.off, grad_ref.begin() + p.off + p.n), 3e-2, 1e-1);

  // ---- optimizer: norm, clip coefficient, AdamW on the GPU's own gradients ----------------
  double ss_gpu = 0, ss_ref = 0;
  for (size_t i = 0; i < grad_gpu.size(); ++i) ss_gpu += double(grad_gpu[i]) * grad_gpu[i];
  for (float g : grad_ref) ss_ref += double(g) * g;
  EXPECT_NEAR(norm_gpu, std::sqrt(ss_gpu), 1e-5 * std::sqrt(ss_gpu));
  EXPECT_NEAR(norm_gpu, std::sqrt(ss_ref), 1e-2 * std::sqrt(ss_ref));
  EXPECT_NEAR(coef_gpu, std::min(1.0, 1.0 / (std::sqrt(ss_gpu) + 1e-6)), 1e-6);
  std::vector<float> delta_gpu, delta_ref;
  for (const auto& t : st.adam) {
    const int64_t off = t.master - st.master;
    Tensor P = Tensor::from<float>({t.n}, std::vector<float>(master0.begin() + off, master0.begin() + off + t.n));
    std::vector<float> g(grad_gpu.begin() + off, grad_gpu.begin() + off + t.n);
    for (auto& x : g) x *= coef_gpu;
    Tensor M = E({t.n}), Vv = E({t.n});
    ops::adamw_update(P, Tensor::from<float>({t.n}, g), M, Vv, {1e-5, 0.9, 0.95, 1e-8, double(t.weight_decay), 1});
    for (int64_t i = 0; i < t.n; ++i) {
      delta_gpu.push_back(master1[size_t(off + i)] - master0[size_t(off + i)]);
      delta_ref.push_back(P.data<float>()[i] - master0[size_t(off + i)]);
    }
  }
  // The GPU contracts p - step * m / d into one FMA, so a weight near 1 can differ by an
  // ulp (1.2e-7) from the host's, against updates of about lr = 1e-5.
  EXPECT_TRUE(close("AdamW update", delta_gpu, delta_ref, 2e-2));
  cuda::gemm_destroy(st.gemm);
}

}  // namespace
}  // namespace lethe
