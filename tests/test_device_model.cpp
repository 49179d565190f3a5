// The model's device path (kernels/device_ops.h), run on the host-staged device: device
// memory and dtypes (bf16 weights and activations, f32 statistics and weight gradients),
// every op routed through the device's kernels, no host access to a device tensor. The
// stand-in's kernels are the CPU's, widened from bf16 and rounded back to the output's
// dtype, which is exactly where the CPU emulation of the bf16 policy rounds; so the device
// model must equal the emulated model bit for bit, and any difference is a rounding point,
// a host loop or a dtype the two paths do not share. (A CUDA run is compared with the same
// emulation by tests/cuda/test_cuda_model.cpp, with tolerances: different kernels.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

#include "engine/core/device_memory.h"
#include "engine/data/token_dataset.h"
#include "engine/eval/nll.h"
#include "engine/model/llama.h"
#include "engine/model/parallel_terms.h"
#include "engine/model/run_device.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/run_optimizer.h"
#include "engine/parallel/grid.h"
#include "kernels/elementwise.h"
#include "kernels/device.h"
#include "kernels/host_staged_device.h"
#include "kernels/optim.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
using namespace lethe::test;

LlamaConfig config(bool tied) {
  LlamaConfig c;
  c.name = tied ? "device-tied" : "device-gqa";
  c.vocab_size = 37;
  c.dim = 16;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = tied ? 4 : 2;
  c.ffn_dim = 24;
  c.max_seq_len = 80;
  c.tie_embeddings = tied;
  c.init_std = 0.3;
  return c;
}

// B = 2 sequences of 70 positions: past one 64-key attention tile.
constexpr int64_t B = 2, T = 70, N = B * T;

// Index of the first element where a (any device, any float dtype) and b differ as f32
// values, or -1. The device holds bf16 where the emulation holds f32 tensors of bf16
// values; widening bf16 to f32 is exact, so equal values compare equal.
int64_t first_difference(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  const Tensor x = a.to(Device::cpu).to(DType::f32), y = b.to(Device::cpu).to(DType::f32);
  const float *p = x.data<float>(), *q = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    if (std::memcmp(p + i, q + i, sizeof(float)) != 0) return i;
  return -1;
}

void expect_same(const Tensor& dev, const Tensor& cpu, const std::string& what) {
  const int64_t i = first_difference(dev, cpu);
  if (i >= 0) {
    const Tensor x = dev.to(Device::cpu).to(DType::f64), y = cpu.to(DType::f64);
    ADD_FAILURE() << what << ": element " << i << " is " << x.data<double>()[i] << " on the device, "
                  << y.data<double>()[i] << " in the emulation";
  }
}

void expect_same_grads(LlamaModel& dev, LlamaModel& cpu, const std::string& when) {
  for (size_t i = 0; i < cpu.grads().size(); ++i)
    expect_same(dev.grads()[i], cpu.grads()[i], when + ": gradient of " + cpu.grads().spec(i).name);
}

struct Batch {
  Tensor tok, tgt, w;
};
Batch batch(const LlamaConfig& c) {
  Batch b{randint({B, T}, c.vocab_size, 5), randint({B, T}, c.vocab_size, 6), randn({B, T}, DType::f64, 7, 0.1)};
  b.tgt.data<int32_t>()[3] = -100;  // a masked target
  return b;
}

class DeviceModel : public ::testing::TestWithParam<bool> {
 protected:
  ScopedHostStagedDevice device_;
};

TEST_P(DeviceModel, MatchesTheEmulatedBf16ModelBitForBit) {
  const LlamaConfig c = config(GetParam());
  const Batch b = batch(c);
  LlamaModel cpu(c, Precision::bf16);
  LlamaModel dev(c, Precision::bf16, nullptr, Device::cuda);
  EXPECT_EQ(dev.params()[1].dtype(), DType::bf16);
  EXPECT_EQ(dev.params()[1].device(), Device::cuda);
  EXPECT_EQ(dev.grads()[1].dtype(), DType::f32);
  cpu.init_weights(11);
  dev.init_weights(11);
  for (size_t i = 0; i < cpu.params().size(); ++i)
    expect_same(dev.params()[i], cpu.params()[i], "initial " + cpu.params().spec(i).name);
  // One recomputed layer and chunks of 9 rows (16 chunks, the last partial): every path of
  // the layers and the chunked head.
  for (LlamaModel* m : {&cpu, &dev}) {
    m->set_recompute_layers(1);
    m->set_loss_chunk_rows(9);
  }

  const int64_t ops_before = device_.ops_run();
  const double l_cpu = cpu.forward(b.tok, b.tgt), l_dev = dev.forward(b.tok, b.tgt);
  EXPECT_EQ(l_dev, l_cpu);
  // layers x (norm, 4 projections (q/k/v fused, gate/up fused), q/k/v split with RoPE,
  // attention, add + norm, SwiGLU, add) + embedding + final norm + 16 chunks x (head,
  // cross-entropy): every op of the forward ran on the device.
  EXPECT_GE(device_.ops_run() - ops_before, c.n_layers * 10 + 2 + 16 * 2);
  EXPECT_EQ(dev.logprobs().device(), Device::cuda);
  expect_same(dev.logprobs(), cpu.logprobs(), "log-probs");
  cpu.backward(0.7);
  dev.backward(0.7);
  expect_same_grads(dev, cpu, "mean NLL");

  // Token weights given (f64 on the host; both paths read them in f32), and a backward
  // with new weights, as WGA runs it.
  cpu.grads().zero();
  dev.grads().zero();
  EXPECT_EQ(dev.forward(b.tok, b.tgt, &b.w), cpu.forward(b.tok, b.tgt, &b.w));
  const Tensor w2 = randn({B, T}, DType::f64, 8);
  cpu.backward(-1.0, &w2);
  dev.backward(-1.0, &w2);
  expect_same_grads(dev, cpu, "new weights");
}

// A device computes the loss chunk by chunk without the host waiting for it: the host's
// waits (ScopedHostStagedDevice::host_transfers: the copies between host and device memory
// and the numbers read back, each a point where a CUDA host waits for the device) in a
// forward and backward, and in the KL's head pass, are as many with 16 chunks as with one.
// Each chunk used to read its loss back (the cross-entropy) or its [N] row statistics
// (the KL's log-sum-exps, computed on the host and copied back).
TEST_P(DeviceModel, LossChunksDoNotWaitForTheHost) {
  const LlamaConfig c = config(GetParam());
  const Batch b = batch(c);
  LlamaModel dev(c, Precision::bf16, nullptr, Device::cuda), ref(c, Precision::bf16, nullptr, Device::cuda);
  dev.init_weights(13);
  ref.init_weights(14);
  ref.set_forward_only(true);
  struct Waits {
    int64_t step = 0, kl = 0;
    double loss = 0, kl_value = 0;
  };
  auto run = [&](int64_t rows) {
    dev.set_loss_chunk_rows(rows);
    ref.set_loss_chunk_rows(rows);
    Waits w;
    const int64_t t0 = device_.host_transfers();
    w.loss = dev.forward(b.tok, b.tgt, &b.w);
    dev.backward();
    const int64_t t1 = device_.host_transfers();
    w.kl_value = kl_to_reference(dev, ref, b.tok, b.tgt, 0.5, true);
    w.step = t1 - t0;
    w.kl = device_.host_transfers() - t1;
    return w;
  };
  run(N);  // the first pass also uploads what is kept (RoPE tables): not per step
  const Waits one = run(N), many = run(9);
  EXPECT_EQ(many.step, one.step) << "forward and backward in 16 chunks against one";
  EXPECT_EQ(many.kl, one.kl) << "the KL's head pass in 16 chunks against one";
  // The forward uploads the batch (tokens, targets, weights) and reads the loss: 4. The
  // KL uploads its row weights, runs both trunks (tokens twice) and reads the sum: 4.
  EXPECT_EQ(one.step, 4);
  EXPECT_EQ(one.kl, 4);
  // Chunking changes only where the double sums are split: equal to rounding in double.
  EXPECT_NEAR(many.loss, one.loss, 1e-12 * std::abs(one.loss));
  EXPECT_NEAR(many.kl_value, one.kl_value, 1e-12 * std::abs(one.kl_value));
}

TEST_P(DeviceModel, KeptLogitsAndTheirBackwardMatch) {
  const LlamaConfig c = config(GetParam());
  const Batch b = batch(c);
  LlamaModel cpu(c, Precision::bf16);
  LlamaModel dev(c, Precision::bf16, nullptr, Device::cuda);
  cpu.init_weights(12);
  dev.init_weights(12);
  cpu.set_keep_logits(true);
  dev.set_keep_logits(true);
  EXPECT_EQ(dev.forward(b.tok, b.tgt, &b.w), cpu.forward(b.tok, b.tgt, &b.w));
  expect_same(dev.logits(), cpu.logits(), "logits");
  cpu.backward();
  dev.backward();
  expect_same_grads(dev, cpu, "kept logits");
}

TEST_P(DeviceModel, CachedDecodingMatches) {
  const LlamaConfig c = config(GetParam());
  LlamaModel cpu(c, Precision::bf16);
  LlamaModel dev(c, Precision::bf16, nullptr, Device::cuda);
  cpu.init_weights(13);
  dev.init_weights(13);
  const Tensor prefix = randint({B, 5}, c.vocab_size, 9);
  Tensor lc = Tensor::empty({B, c.vocab_size}, DType::f32);
  Tensor ld = Tensor::empty({B, c.vocab_size}, DType::bf16, Device::cuda);
  cpu.decode_prefill(prefix, lc);
  dev.decode_prefill(prefix, ld);
  expect_same(ld, lc, "prefill logits");
  for (int step = 0; step < 3; ++step) {
    const Tensor next = randint({B}, c.vocab_size, 20 + uint64_t(step));
    cpu.decode_step(next, lc);
    dev.decode_step(next, ld);
    expect_same(ld, lc, "logits of decoding step " + std::to_string(step));
  }
}

// Training steps: forward, backward, clipping and AdamW on the fp32 master weights (on the
// device beside the bf16 parameters), writing back the bf16 copy the next forward reads.
TEST_P(DeviceModel, AdamWStepsMatch) {
  const LlamaConfig c = config(GetParam());
  const Batch b = batch(c);
  LlamaModel cpu(c, Precision::bf16);
  LlamaModel dev(c, Precision::bf16, nullptr, Device::cuda);
  cpu.init_weights(14);
  dev.init_weights(14);
  OptimConfig oc;
  oc.type = "adamw";
  oc.weight_decay = 0.1;
  oc.grad_clip = 0.5;  // below the gradient norm: the scaling runs too
  Optimizer ocpu(cpu.params(), oc, Precision::bf16), odev(dev.params(), oc, Precision::bf16);
  EXPECT_EQ(odev.master().flat().device(), Device::cuda);
  EXPECT_EQ(odev.m().flat().dtype(), DType::f32);
  for (int step = 0; step < 3; ++step) {
    cpu.grads().zero();
    dev.grads().zero();
    EXPECT_EQ(dev.forward(b.tok, b.tgt), cpu.forward(b.tok, b.tgt)) << "step " << step;
    cpu.backward();
    dev.backward();
    // The gradient norm's per-tensor sums come back together: the step waits for the host
    // once, however many parameter tensors there are (it waited once per tensor before).
    const int64_t t0 = device_.host_transfers();
    EXPECT_EQ(odev.step(dev.grads(), 3e-2), ocpu.step(cpu.grads(), 3e-2)) << "gradient norm, step " << step;
    EXPECT_EQ(device_.host_transfers() - t0, 1) << "host waits in the optimizer step, " << dev.grads().size()
                                                 << " parameter tensors, step " << step;
  }
  expect_same(odev.master().flat(), ocpu.master().flat(), "master weights");
  expect_same(odev.v().flat(), ocpu.v().flat(), "second moments");
  expect_same(dev.params().flat(), cpu.params().flat(), "bf16 weights");
}

// lethe eval's numbers (NLL, per-sequence NLL, top-1 from each logits chunk's argmax) from
// the model on the device equal the emulation's: the chunks and log-probs are read back
// through host copies.
TEST_P(DeviceModel, EvaluationMatches) {
  const LlamaConfig c = config(GetParam());
  TokenDataset ds;
  ds.tokenizer = "bytes";
  ds.vocab_size = c.vocab_size;
  ds.offsets = {0};
  for (int d = 0; d < 3; ++d) {
    for (int i = 0; i < 40 + 7 * d; ++i) ds.tokens.push_back(int32_t((i * 13 + d * 5) % c.vocab_size));
    ds.offsets.push_back(int64_t(ds.tokens.size()));
  }
  ds.doc_sha256.resize(3);
  LlamaModel cpu(c, Precision::bf16);
  LlamaModel dev(c, Precision::bf16, nullptr, Device::cuda);
  cpu.init_weights(15);
  dev.init_weights(15);
  cpu.set_loss_chunk_rows(9);
  dev.set_loss_chunk_rows(9);
  const NllResult a = evaluate_nll(cpu, ds, 32, 2, 0), b = evaluate_nll(dev, ds, 32, 2, 0);
  ASSERT_GT(a.tokens, 0);
  EXPECT_EQ(b.nll_sum, a.nll_sum);
  EXPECT_EQ(b.tokens, a.tokens);
  EXPECT_EQ(b.correct, a.correct);
  EXPECT_EQ(b.sequences, a.sequences);
  EXPECT_EQ(b.sequence_nll, a.sequence_nll);
}

INSTANTIATE_TEST_SUITE_P(TiedAndGqa, DeviceModel, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "tied" : "gqa"; });

// What a device holds, counted by the caching allocator in the bytes each tensor asked
// for: a model only run forward (a frozen reference, an oracle being scored) holds its
// bf16 weights and no gradients; the gradients (fp32) come with the first use, the
// optimizer's fp32 master and two moments with the optimizer; and once training is over
// both go again (lethe unlearn's final evaluation), leaving the model's numbers unchanged.
TEST(DeviceModelMemory, OnlyTrainingHoldsGradientsAndOptimizerState) {
  ScopedHostStagedDevice device;
  const LlamaConfig c = config(false);
  const Batch b = batch(c);
  CachingAllocator& a = device_allocator();
  const size_t P = size_t(c.n_params());
  auto held = [&] { return a.stats().requested; };
  const size_t empty = held();
  LlamaModel m(c, Precision::bf16, nullptr, Device::cuda);
  m.init_weights(21);
  EXPECT_EQ(held() - empty, 2 * P) << "a new model holds its bf16 weights only";
  const double loss0 = m.forward(b.tok, b.tgt);
  const size_t forward_only = held();
  m.grads();
  EXPECT_EQ(held() - forward_only, 4 * P) << "the fp32 gradients, on first use";
  OptimConfig oc;
  oc.type = "adamw";
  RunOptimizer opt(m.params(), m.grads(), oc, *ProcessGrid::single(), Precision::bf16);
  EXPECT_EQ(held() - forward_only, (4 + 4 + 8) * P) << "the gradients, the fp32 master and two fp32 moments";
  m.grads().zero();
  m.forward(b.tok, b.tgt);
  m.backward();
  opt.step(1e-2);
  const double loss1 = m.forward(b.tok, b.tgt);
  EXPECT_NE(loss1, loss0);
  const size_t trained = held();
  opt.release();
  EXPECT_FALSE(opt.held());
  EXPECT_EQ(opt.steps_taken(), 1);
  EXPECT_EQ(trained - held(), 12 * P) << "the master and the moments are released";
  const size_t before_release = held();
  m.release_training_state();
  EXPECT_GE(before_release - held(), 4 * P) << "the gradients and the backward's scratch are released";
  const size_t released = held();
  EXPECT_EQ(m.forward(b.tok, b.tgt), loss1) << "the released model computes what it did";
  EXPECT_EQ(held(), released) << "a forward allocates no gradients again";
}

TEST(DeviceModelErrors, HostReadsOfDeviceTensorsAreRefused) {
  ScopedHostStagedDevice device;
  LlamaModel dev(config(false), Precision::bf16, nullptr, Device::cuda);
  dev.init_weights(1);
  const Batch b = batch(config(false));
  dev.forward(b.tok, b.tgt);
  try {
    (void)dev.logprobs().data<float>();
    FAIL() << "data<float>() read a device tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is on cuda"), std::string::npos) << e.what();
  }
}

TEST(DeviceModelErrors, AnOpOverTwoDevicesNamesBoth) {
  ScopedHostStagedDevice device;
  Tensor y = Tensor::zeros({4}, DType::f32, Device::cuda);
  const Tensor x = Tensor::zeros({4}, DType::f32);
  try {
    ops::add_(y, x);
    FAIL() << "add ran over two devices";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add: a is on cuda but b is on cpu"), std::string::npos) << e.what();
  }
}

TEST(DeviceModelErrors, NoDeviceKernelsIsAClearError) {
  ScopedHostStagedDevice device;
  Tensor y = Tensor::zeros({4}, DType::f32, Device::cuda);
  auto ops = swap_device_ops_for_testing(nullptr);
  try {
    ops::scale_(y, 2.0);
    ADD_FAILURE() << "scale_ ran without device kernels";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no kernels for that device"), std::string::npos) << e.what();
  }
  swap_device_ops_for_testing(std::move(ops));
}

TEST(DeviceModelErrors, TheDeviceRunsTheBf16PolicyOnly) {
  ScopedHostStagedDevice device;
  try {
    LlamaModel m(config(true), Precision::f32, nullptr, Device::cuda);
    FAIL() << "an f32 model was built on the device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16 policy"), std::string::npos) << e.what();
  }
}

// `auto` takes a GPU only when one is visible and its path is opted into, and never for an
// f32 run; `cuda` without a GPU is refused naming the key. (On a machine with a GPU the
// first case checks the other branch.)
TEST(RunDevice, AutoTakesAVisibleGpuOnlyWhenOptedIn) {
  struct OptIn {
    OptIn() { ::setenv("LETHE_UNVERIFIED_CUDA", "1", 1); }
    ~OptIn() { ::unsetenv("LETHE_UNVERIFIED_CUDA"); }
  };
  const bool gpu = cuda_compiled() && !cuda_devices().empty();
  {
    OptIn opt_in;
    const RunDevice a = resolve_run_device(DeviceChoice::automatic, std::nullopt, "train.device");
    EXPECT_EQ(a.device, gpu ? Device::cuda : Device::cpu) << a.line;
    EXPECT_EQ(a.precision, gpu ? Precision::bf16 : Precision::f32) << a.line;
    if (!gpu) {
      EXPECT_NE(a.line.find("(auto: no GPU visible)"), std::string::npos) << a.line;
    }
    const RunDevice f = resolve_run_device(DeviceChoice::automatic, Precision::f32, "train.device");
    EXPECT_EQ(f.device, Device::cpu) << f.line;
  }
  const RunDevice plain = resolve_run_device(DeviceChoice::automatic, std::nullopt, "train.device");
  EXPECT_EQ(plain.device, Device::cpu) << plain.line;
  if (gpu) {
    EXPECT_NE(plain.line.find("LETHE_UNVERIFIED_CUDA=1 uses it"), std::string::npos) << plain.line;
    return;
  }
  try {
    resolve_run_device(DeviceChoice::cuda, std::nullopt, "r.yaml: key 'train.device'");
    ADD_FAILURE() << "cuda without a GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("r.yaml: key 'train.device': cuda: "), std::string::npos) << e.what();
  }
}

// The attention kernels are picked by name (LETHE_ATTENTION_FORWARD / _BACKWARD at start-up);
// a wrong name is refused naming where it came from and the choices, in any build.
TEST(RunDevice, AttentionKernelNamesAreChecked) {
  EXPECT_EQ(cuda_attention_kernels(), "forward wmma, backward wmma");  // the defaults
  select_cuda_attention_kernels("mma", "F", "mma_deterministic", "B");
  EXPECT_EQ(cuda_attention_kernels(), "forward mma, backward mma_deterministic");
  select_cuda_attention_kernels("wmma", "F", "mma", "B");
  EXPECT_EQ(cuda_attention_kernels(), "forward wmma, backward mma");
  struct Bad {
    const char *fwd, *bwd, *expect;
  };
  for (const Bad b : {Bad{"flash", "wmma", "F: the attention forward kernel must be wmma or mma, got 'flash'"},
                      Bad{"wmma", "mma_det", "B: the attention backward kernel must be wmma, mma or mma_deterministic, "
                                             "got 'mma_det'"}}) {
    try {
      select_cuda_attention_kernels(b.fwd, "F", b.bwd, "B");
      ADD_FAILURE() << "accepted " << b.fwd << " / " << b.bwd;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(b.expect), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(cuda_attention_kernels(), "forward wmma, backward mma");  // a refused name changes nothing
  select_cuda_attention_kernels("wmma", "F", "wmma", "B");
}

TEST(DeviceOptimizerOps, AdamWAndNormsMatchTheCpu) {
  ScopedHostStagedDevice device;
  Tensor p = randn({50}, DType::f32, 1), g = randn({50}, DType::f32, 2), m = randn({50}, DType::f32, 3, 0.1),
         v = randn({50}, DType::f32, 4, 0.1);
  for (int64_t i = 0; i < 50; ++i) v.data<float>()[i] = std::abs(v.data<float>()[i]);
  Tensor dp = p.to(Device::cuda), dg = g.to(Device::cuda), dm = m.to(Device::cuda), dv = v.to(Device::cuda);
  const ops::AdamWArgs a{1e-2, 0.9, 0.95, 1e-8, 0.1, 3};
  ops::adamw_update(p, g, m, v, a);
  ops::adamw_update(dp, dg, dm, dv, a);
  expect_same(dp, p, "AdamW parameters");
  expect_same(dm, m, "AdamW first moment");
  expect_same(dv, v, "AdamW second moment");
  EXPECT_EQ(ops::sum_squares(dg), ops::sum_squares(g));
  const int64_t t0 = device.host_transfers();
  const std::vector<double> each = ops::sum_squares_each({dg, dm, dv});
  EXPECT_EQ(device.host_transfers() - t0, 1) << "one wait for three sums";
  EXPECT_EQ(each, (std::vector<double>{ops::sum_squares(g), ops::sum_squares(m), ops::sum_squares(v)}));
  try {
    ops::sum_squares_each({dg, g});
    ADD_FAILURE() << "tensors on two devices were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sum_squares_each: tensor 1 is on cpu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lethe
