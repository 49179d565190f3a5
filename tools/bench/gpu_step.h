// One GA+GD unlearning step on the GPU, composed from the kernels in kernels/cuda: a
// forget and a retain stream in one batch with signed per-token weights (-1/n ascends the
// forget NLL, +1/n descends the retain NLL), forward, chunked vocabulary cross-entropy
// with the backward fused, backward, global grad-norm clipping and AdamW on fp32 master
// weights. Shared by the benchmark (tools/bench/gpu_step.cpp) and the GPU test that checks
// the whole step against the CPU ops (tests/cuda/test_cuda_step.cpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cuda/arena.h"          // Arena
#include "kernels/cuda/attention.h"      // attention_forward/backward
#include "kernels/cuda/cast.h"           // cast_f32_to_bf16, fill, fill_uniform
#include "kernels/cuda/cross_entropy.h"  // cross_entropy_forward, weighted_nll
#include "kernels/cuda/embedding.h"      // embedding_forward/backward
#include "kernels/cuda/linear.h"         // GemmContext, linear_forward/backward
#include "kernels/cuda/optim.h"          // adamw_multi, sum_squares_multi, clip_coefficient
#include "kernels/cuda/rmsnorm.h"        // rmsnorm_*, residual_rmsnorm_forward
#include "kernels/cuda/rope.h"           // rope_forward/backward
#include "kernels/cuda/swiglu.h"         // swiglu_forward/backward

namespace lethe::bench {

struct Model {
  const char* name;
  int64_t C, H, KV, F, V;
  double theta;
};
// Llama-2-7B and Yi-6B widths (configs/models/llama2-7b.yaml, yi-6b.yaml).
inline const Model kModels[] = {{"llama2-7b", 4096, 32, 32, 11008, 32000, 1e4},
                         {"yi-6b", 4096, 32, 4, 11008, 64000, 5e6}};

// All parameters live in one flat range of each of five buffers (bf16 weights, fp32
// master, grad, m, v), so zeroing the grads or taking a checkpoint is one call.
struct Param {
  int64_t off = 0, n = 0;
  float wd = 0.f;
};
struct Layer {
  Param wq, wk, wv, wo, wg, wu, wd, n1, n2;
};
struct Saved {  // activations kept from forward to backward, per layer
  bf16 *res, *n1, *q, *k, *v, *o, *mid, *n2, *g, *u, *act;
  float *rstd1, *rstd2, *lse;
};

struct Step {
  Model m;
  int64_t L, B, T, N, D;
  int64_t n_params = 0;
  std::vector<Layer> layers;
  Param emb, nf, lm;
  bf16* w16 = nullptr;
  float *master = nullptr, *grad = nullptr, *mom1 = nullptr, *mom2 = nullptr;
  std::vector<Saved> saved;
  bf16 *res_final, *nf_out;
  float* rstd_f;
  // scratch
  bf16 *tmp, *dr, *dn, *dact, *dg, *du, *dout, *dq, *dk, *dv, *logits;
  void* attn_ws;
  float *cos, *sin, *tw, *lp, *lse_tok, *coef, *norm;
  double *loss, *partials, *sumsq;
  int32_t *ids, *tg;
  int64_t chunk;
  std::vector<cuda::AdamWTensor> adam;
  std::vector<const float*> grad_ptrs;
  std::vector<int64_t> grad_sizes;
  cuda::GemmContext* gemm = nullptr;

  Param add(int64_t n, float wd) {
    Param p{n_params, n, wd};
    n_params += (n + 127) / 128 * 128;  // 256-byte aligned slices for cuBLASLt and vector loads
    return p;
  }
  int64_t layer_params() const {
    return 2 * m.C * H_D() + 2 * m.C * KV_D() + 3 * m.C * m.F + 2 * m.C;
  }
  int64_t H_D() const { return m.H * D; }
  int64_t KV_D() const { return m.KV * D; }
  size_t activation_bytes_per_layer() const {
    return size_t(N) * 2 * (4 * m.C + 2 * H_D() + 2 * KV_D() + 3 * m.F) + size_t(N) * 4 * (2 + m.H) + 8 * 256;
  }
  size_t fixed_bytes() const {
    const size_t globals = size_t(2 * m.V * m.C + m.C) * 18;
    const size_t scratch = size_t(N) * 2 * (4 * m.C + 3 * m.F + 2 * H_D() + 2 * KV_D()) +
                           cuda::attention_backward_workspace_bytes(B, T, m.H, D) + size_t(chunk * m.V) * 2 +
                           size_t(N) * 2 * 2 * m.C + (size_t(64) << 20);
    return globals + scratch;
  }

  Step(const Model& model, int64_t layers, int64_t batch, int64_t seq)
      : m(model), L(layers), B(batch), T(seq), N(batch * seq), D(model.C / model.H), chunk(std::min<int64_t>(N, 4096)) {}

  void build(cuda::Arena& a, uint64_t seed = 1234) {
    for (int64_t l = 0; l < L; ++l) {
      Layer y;
      y.wq = add(H_D() * m.C, 0.1f), y.wk = add(KV_D() * m.C, 0.1f), y.wv = add(KV_D() * m.C, 0.1f);
      y.wo = add(m.C * H_D(), 0.1f), y.wg = add(m.F * m.C, 0.1f), y.wu = add(m.F * m.C, 0.1f);
      y.wd = add(m.C * m.F, 0.1f), y.n1 = add(m.C, 0.f), y.n2 = add(m.C, 0.f);
      layers.push_back(y);
    }
    emb = add(m.V * m.C, 0.f), nf = add(m.C, 0.f), lm = add(m.V * m.C, 0.1f);
    w16 = a.alloc_n<bf16>(size_t(n_params), "bf16 weights");
    master = a.alloc_n<float>(size_t(n_params), "master weights");
    grad = a.alloc_n<float>(size_t(n_params), "gradients");
    mom1 = a.alloc_n<float>(size_t(n_params), "adam m");
    mom2 = a.alloc_n<float>(size_t(n_params), "adam v");
    cuda::fill_uniform(master, n_params, 0.02f, seed);
    auto ones = [&](Param p) { cuda::fill(master + p.off, p.n, 1.f); };
    for (auto& y : layers) ones(y.n1), ones(y.n2);
    ones(nf);
    cuda::cast_f32_to_bf16(master, w16, n_params);
    cuda::fill_bytes(mom1, 0, size_t(n_params) * 4);
    cuda::fill_bytes(mom2, 0, size_t(n_params) * 4);
    auto reg = [&](Param p) {
      adam.push_back({master + p.off, grad + p.off, mom1 + p.off, mom2 + p.off, w16 + p.off, p.n, p.wd});
      grad_ptrs.push_back(grad + p.off);
      grad_sizes.push_back(p.n);
    };
    for (auto& y : layers)
      for (Param p : {y.wq, y.wk, y.wv, y.wo, y.wg, y.wu, y.wd, y.n1, y.n2}) reg(p);
    reg(emb), reg(nf), reg(lm);

    auto bfa = [&](int64_t n, const char* w) { return a.alloc_n<bf16>(size_t(n), w); };
    auto f32a = [&](int64_t n, const char* w) { return a.alloc_n<float>(size_t(n), w); };
    for (int64_t l = 0; l < L; ++l) {
      Saved s;
      s.res = bfa(N * m.C, "res"), s.n1 = bfa(N * m.C, "n1"), s.q = bfa(N * H_D(), "q");
      s.k = bfa(N * KV_D(), "k"), s.v = bfa(N * KV_D(), "v"), s.o = bfa(N * H_D(), "o");
      s.mid = bfa(N * m.C, "mid"), s.n2 = bfa(N * m.C, "n2"), s.g = bfa(N * m.F, "g"), s.u = bfa(N * m.F, "u");
      s.act = bfa(N * m.F, "act"), s.rstd1 = f32a(N, "rstd1"), s.rstd2 = f32a(N, "rstd2");
      s.lse = f32a(B * m.H * T, "lse");
      saved.push_back(s);
    }
    res_final = bfa(N * m.C, "res_final"), nf_out = bfa(N * m.C, "nf_out"), rstd_f = f32a(N, "rstd_f");
    tmp = bfa(N * m.C, "tmp"), dr = bfa(N * m.C, "dr"), dn = bfa(N * m.C, "dn");
    dact = bfa(N * m.F, "dact"), dg = bfa(N * m.F, "dg"), du = bfa(N * m.F, "du");
    dout = bfa(N * H_D(), "dout"), dq = bfa(N * H_D(), "dq"), dk = bfa(N * KV_D(), "dk"), dv = bfa(N * KV_D(), "dv");
    logits = bfa(chunk * m.V, "logits");
    attn_ws = a.alloc(cuda::attention_backward_workspace_bytes(B, T, m.H, D), "attention workspace");
    cos = f32a(T * D / 2, "cos"), sin = f32a(T * D / 2, "sin");
    tw = f32a(N, "token weights"), lp = f32a(N, "logprobs"), lse_tok = f32a(N, "lse");
    coef = f32a(1, "clip"), norm = f32a(1, "norm");
    loss = a.alloc_n<double>(1, "loss"), sumsq = a.alloc_n<double>(1, "sumsq");
    partials = a.alloc_n<double>(cuda::kNormPartials, "norm partials");
    ids = a.alloc_n<int32_t>(size_t(N), "ids"), tg = a.alloc_n<int32_t>(size_t(N), "targets");

    // RoPE tables (no scaling for these two models).
    std::vector<float> c(size_t(T * D / 2)), s(c.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double ang = double(t) * std::pow(m.theta, -double(2 * i) / double(D));
        c[size_t(t * D / 2 + i)] = float(std::cos(ang));
        s[size_t(t * D / 2 + i)] = float(std::sin(ang));
      }
    cuda::copy_to_device(cos, c.data(), c.size() * 4);
    cuda::copy_to_device(sin, s.data(), s.size() * 4);

    // Batch: the first half of the sequences is the forget stream (weight -1/n: ascent),
    // the rest the retain stream (+1/n: descent); each predicts its next token.
    std::mt19937 rng(7);
    std::vector<int32_t> tok(static_cast<size_t>(N)), tgt(static_cast<size_t>(N));
    for (auto& t : tok) t = int32_t(rng() % uint32_t(m.V));
    std::vector<float> w(static_cast<size_t>(N));
    const int64_t nf_seq = std::max<int64_t>(1, B / 2);
    const float n_forget = float(nf_seq * (T - 1)), n_retain = float((B - nf_seq) * (T - 1));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const size_t i = size_t(b * T + t);
        tgt[i] = t + 1 < T ? tok[i + 1] : cuda::kIgnoreIndex;
        w[i] = b < nf_seq ? -1.f / n_forget : (n_retain > 0 ? 1.f / n_retain : 0.f);
      }
    cuda::copy_to_device(ids, tok.data(), tok.size() * 4);
    cuda::copy_to_device(tg, tgt.data(), tgt.size() * 4);
    cuda::copy_to_device(tw, w.data(), w.size() * 4);
    gemm = cuda::gemm_create();
    cuda::synchronize();
  }

  const bf16* W(Param p) const { return w16 + p.off; }
  float* G(Param p) const { return grad + p.off; }

  void forward_backward() {
    const float eps = 1e-5f, scale = 1.f / std::sqrt(float(D));
    const int64_t C = m.C;
    cuda::fill_bytes(grad, 0, size_t(n_params) * 4);
    cuda::embedding_forward(ids, W(emb), saved[0].res, N, 0, m.V, m.V, C);
    cuda::rmsnorm_forward(saved[0].res, W(layers[0].n1), eps, saved[0].n1, saved[0].rstd1, N, C);
    for (int64_t l = 0; l < L; ++l) {
      const Layer& y = layers[size_t(l)];
      Saved& s = saved[size_t(l)];
      cuda::linear_forward(gemm, s.n1, W(y.wq), s.q, N, C, H_D());
      cuda::linear_forward(gemm, s.n1, W(y.wk), s.k, N, C, KV_D());
      cuda::linear_forward(gemm, s.n1, W(y.wv), s.v, N, C, KV_D());
      cuda::rope_forward(s.q, cos, sin, s.q, B, T, m.H, D);
      cuda::rope_forward(s.k, cos, sin, s.k, B, T, m.KV, D);
      cuda::attention_forward(s.q, s.k, s.v, scale, s.o, s.lse, B, T, m.H, m.KV, D);
      cuda::linear_forward(gemm, s.o, W(y.wo), tmp, N, H_D(), C);
      cuda::copy_device(s.mid, s.res, size_t(N * C) * 2);
      cuda::residual_rmsnorm_forward(s.mid, tmp, W(y.n2), eps, s.n2, s.rstd2, N, C);
      cuda::linear_forward(gemm, s.n2, W(y.wg), s.g, N, C, m.F);
      cuda::linear_forward(gemm, s.n2, W(y.wu), s.u, N, C, m.F);
      cuda::swiglu_forward(s.g, s.u, s.act, N * m.F);
      cuda::linear_forward(gemm, s.act, W(y.wd), tmp, N, m.F, C);
      const bool last = l + 1 == L;
      bf16* next = last ? res_final : saved[size_t(l + 1)].res;
      cuda::copy_device(next, s.mid, size_t(N * C) * 2);
      if (last) cuda::residual_rmsnorm_forward(next, tmp, W(nf), eps, nf_out, rstd_f, N, C);
      else cuda::residual_rmsnorm_forward(next, tmp, W(layers[size_t(l + 1)].n1), eps, saved[size_t(l + 1)].n1,
                                          saved[size_t(l + 1)].rstd1, N, C);
    }
    // LM head and loss, a chunk of tokens at a time: logits -> (in place) dlogits -> grads.
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t n = std::min(chunk, N - r0);
      cuda::linear_forward(gemm, nf_out + r0 * C, W(lm), logits, n, C, m.V);
      cuda::cross_entropy_forward(logits, tg + r0, tw + r0, lp + r0, lse_tok + r0, logits, 1.f, n, m.V);
      cuda::linear_backward(gemm, logits, nf_out + r0 * C, W(lm), dn + r0 * C, false, G(lm), n, C, m.V);
    }
    cuda::weighted_nll(lp, tg, tw, loss, N);
    cuda::rmsnorm_backward(dn, res_final, W(nf), rstd_f, dr, false, G(nf), N, C);
    for (int64_t l = L - 1; l >= 0; --l) {
      const Layer& y = layers[size_t(l)];
      Saved& s = saved[size_t(l)];
      cuda::linear_backward(gemm, dr, s.act, W(y.wd), dact, false, G(y.wd), N, m.F, C);
      cuda::swiglu_backward(dact, s.g, s.u, dg, du, N * m.F);
      cuda::linear_backward(gemm, dg, s.n2, W(y.wg), dn, false, G(y.wg), N, C, m.F);
      cuda::linear_backward(gemm, du, s.n2, W(y.wu), dn, true, G(y.wu), N, C, m.F);
      cuda::rmsnorm_backward(dn, s.mid, W(y.n2), s.rstd2, dr, true, G(y.n2), N, C);
      cuda::linear_backward(gemm, dr, s.o, W(y.wo), dout, false, G(y.wo), N, H_D(), C);
      cuda::attention_backward(dout, s.q, s.k, s.v, s.o, s.lse, scale, dq, dk, dv, attn_ws, B, T, m.H, m.KV, D);
      cuda::rope_backward(dq, cos, sin, dq, B, T, m.H, D);
      cuda::rope_backward(dk, cos, sin, dk, B, T, m.KV, D);
      cuda::linear_backward(gemm, dq, s.n1, W(y.wq), dn, false, G(y.wq), N, C, H_D());
      cuda::linear_backward(gemm, dk, s.n1, W(y.wk), dn, true, G(y.wk), N, C, KV_D());
      cuda::linear_backward(gemm, dv, s.n1, W(y.wv), dn, true, G(y.wv), N, C, KV_D());
      cuda::rmsnorm_backward(dn, s.res, W(y.n1), s.rstd1, dr, true, G(y.n1), N, C);
    }
    cuda::embedding_backward(ids, dr, G(emb), N, 0, m.V, m.V, C);
  }

  void optimizer_step(int64_t step) {
    cuda::sum_squares_multi(grad_ptrs.data(), grad_sizes.data(), int(grad_ptrs.size()), partials, sumsq);
    cuda::clip_coefficient(sumsq, 1.f, coef, norm);
    cuda::adamw_multi(adam.data(), int(adam.size()), {1e-5, 0.9, 0.95, 1e-8, step}, coef);
  }

  double flops_per_token() const {
    const double layer = double(2 * m.C * H_D() + 2 * m.C * KV_D() + 3 * m.C * m.F);
    return 6.0 * (double(L) * layer + double(m.V * m.C)) + 6.0 * double(L) * double(T) * double(H_D());
  }
  // FlashAttention's convention: causal forward 2*B*H*T^2*D, backward 2.5x the forward.
  double attention_flops() const { return 3.5 * 2.0 * double(B) * double(m.H) * double(T) * double(T) * double(D); }
};

}  // namespace lethe::bench
