// Tensor- and data-parallel training of the tiny model against one process. Every rank
// also builds the one-process model (cheap at this size) and compares its slice: the loss,
// every gradient (summed over dp), and the weights after 3 AdamW steps with clipping and
// weight decay, for plain descent and for a loss with ascent rows and a KL term.
// Registered with 2 ranks (tp=2, dp=2) and 4 ranks (tp=4, tp=2 x dp=2, dp=4).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "engine/core/debug_mode.h"
#include "engine/eval/mia.h"
#include "engine/io/hf_model.h"
#include "engine/io/model_loader.h"
#include "engine/io/safetensors.h"
#include "engine/model/llama.h"
#include "engine/model/parallel_terms.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/run_optimizer.h"
#include "engine/optim/sharded_optimizer.h"
#include "engine/parallel/vocab_parallel.h"
#include "engine/unlearn/terms.h"
#include "kernels/cross_entropy.h"
#include "kernels/host_staged_device.h"
#include "par_test_util.h"
#include "tests/test_util.h"

namespace lethe {
namespace {

// Relative to each tensor's largest entry. f64 shows the arithmetic is the same (loss,
// gradients, norm and weights to 1e-10). In f32 the loss, gradients and norm agree to
// 1e-5; the weights after 3 AdamW steps get looser bounds because AdamW divides by
// sqrt(v) + eps: for a gradient entry near eps, a rounding difference of 1e-8 (another
// summation order) moves its weight by a fraction of lr. Measured at lr 3e-3 over all
// layouts: max entry error / max weight up to 8.5e-4, relative L2 error up to 8.6e-5.
double tol(DType dt) { return dt == DType::f64 ? 1e-10 : 1e-5; }
double weight_tol(DType dt) { return dt == DType::f64 ? 1e-10 : 2e-3; }
double weight_l2_tol(DType dt) { return dt == DType::f64 ? 1e-10 : 2e-4; }

double rel_l2(const Tensor& a, const Tensor& b) {
  const auto x = test::values(a), y = test::values(b);
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) num += (x[i] - y[i]) * (x[i] - y[i]), den += y[i] * y[i];
  return std::sqrt(num / den);
}
constexpr int64_t B = 4, T = 16;

LlamaConfig tiny() {
  LlamaConfig c;
  c.name = "tiny-par";
  c.vocab_size = 256;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;  // tp=4 replicates k/v, tp=2 splits them
  c.ffn_dim = 176;
  c.max_seq_len = 64;
  return c;
}

struct Batch {
  Tensor tokens, targets, weights;  // global [B, T]
};

Batch make_batch(int step) {
  Batch b;
  b.tokens = test::randint({B, T}, 256, 100 + uint64_t(step));
  b.targets = test::randint({B, T}, 256, 200 + uint64_t(step));
  for (int64_t t = 0; t < 3; ++t) b.targets.data<int32_t>()[2 * T + t] = ops::kIgnoreIndex;  // padding
  // Signed per-token weights: rows 0-1 descend, rows 2-3 ascend (as GA+GD does).
  b.weights = Tensor::zeros({B, T}, DType::f64);
  for (int64_t i = 0; i < B * T; ++i)
    b.weights.data<double>()[i] = b.targets.data<int32_t>()[i] == ops::kIgnoreIndex ? 0. : (i < 2 * T ? 1. : -0.5) / double(B * T);
  return b;
}

Tensor rows(const Tensor& t, int64_t r0, int64_t n) { return t.slice_rows(r0, r0 + n).clone(); }

// Loss and gradients of one step. mode 0: mean NLL; mode 1: weighted NLL with ascent rows
// plus 0.3 * mean KL(p_ref || p_theta) over real positions.
double loss_and_grads(LlamaModel& m, LlamaModel& ref, const Batch& gb, int mode) {
  ProcessGrid& g = m.grid();
  const int64_t Bl = B / g.dp(), r0 = Bl * g.dp_rank();
  const Tensor tok = rows(gb.tokens, r0, Bl), tgt = rows(gb.targets, r0, Bl), w = rows(gb.weights, r0, Bl);
  m.grads().zero();
  if (mode == 0) {
    const double loss = m.forward(tok, tgt);
    m.backward();
    return loss;
  }
  double loss = m.forward(tok, tgt, &w);
  m.backward();
  // KL over the global batch's real positions: each rank's rows, normalised globally.
  int64_t valid = 0;
  for (int64_t i = 0; i < Bl * T; ++i) valid += tgt.data<int32_t>()[i] != ops::kIgnoreIndex;
  valid = g.dp_group().all_reduce(valid, ReduceOp::sum);
  Tensor rw = Tensor::zeros({Bl * T}, DType::f64);
  for (int64_t i = 0; i < Bl * T; ++i)
    rw.data<double>()[i] = tgt.data<int32_t>()[i] != ops::kIgnoreIndex ? 0.3 / double(valid) : 0.0;
  const Tensor ref_logits = ref.forward_logits(tok).clone();
  const Tensor& logits = m.forward_logits(tok);
  Tensor dl = Tensor::empty(logits.shape(), logits.dtype());
  const double kl = vocab_parallel_kl(ref_logits, logits, rw, &dl, g.tp_group());
  m.backward_logits(dl);
  return loss + g.dp_group().all_reduce(kl, ReduceOp::sum);
}

// opt: "adamw", "sgd" (momentum), or "frozen" (AdamW with every layer-0 tensor frozen,
// as RMU trains only a few tensors).
void run_layout(int tp, int dp, bool zero1, int mode, DType dt, bool recompute = false,
                const std::string& opt = "adamw", const LlamaConfig& cfg = tiny(), int64_t bucket_elems = 4096) {
  SCOPED_TRACE(::testing::Message() << "tp=" << tp << " dp=" << dp << " zero1=" << zero1 << " mode=" << mode << " "
                                    << dtype_name(dt) << (recompute ? " recompute" : "") << " " << opt);
  const double kTol = tol(dt);
  auto grid = ProcessGrid::from_world(test::mpi_world_shared(), {tp, dp, zero1});
  auto single = ProcessGrid::single();
  LlamaModel par(cfg, dt, grid), one(cfg, dt, single);
  LlamaModel par_ref(cfg, dt, grid), one_ref(cfg, dt, single);
  par.init_weights(7);
  one.init_weights(7);
  par_ref.init_weights(8);
  one_ref.init_weights(8);
  if (recompute) par.set_recompute_layers(1);  // recomputed layers communicate again in the backward
  // The parallel loss path in chunks of 5 rows (chunk edges inside a sequence, and a
  // vocabulary-parallel cross-entropy per chunk) against the one-process whole logits.
  par.set_loss_chunk_rows(5);
  for (size_t i = 0; i < par.params().size(); ++i)
    ASSERT_EQ(test::scaled_err(par.params()[i], test::block_of(one.params()[i], par.params().spec(i))), 0.0)
        << "initial " << par.params().spec(i).name;

  OptimConfig oc;
  oc.weight_decay = 0.1;
  oc.grad_clip = 0.5;
  if (opt == "sgd") oc.type = "sgd", oc.momentum = 0.9;
  Optimizer opt_one(one.params(), oc);
  // Small buckets: the tiny model's gradient travels in many all-reduces, most started
  // during the backward.
  ShardedOptimizer opt_par(par.params(), par.grads(), oc, *grid, bucket_elems);
  if (opt == "frozen") {
    std::vector<bool> train(par.params().size());
    for (size_t i = 0; i < train.size(); ++i) train[i] = par.params().spec(i).name.find("layers.0.") == std::string::npos;
    opt_one.set_trainable(train);
    opt_par.set_trainable(train);
  }
  for (int step = 0; step < 3; ++step) {
    const Batch b = make_batch(step);
    // Overlap the dp all-reduce with the (only) backward pass; not on step 0, whose
    // unreduced gradients are compared below, nor with the KL's second backward.
    if (step > 0 && mode == 0) par.set_grad_ready_hook([&](size_t i) { opt_par.grad_ready(i); });
    else par.set_grad_ready_hook(nullptr);
    const double l1 = loss_and_grads(one, one_ref, b, mode);
    const double lp = loss_and_grads(par, par_ref, b, mode);
    EXPECT_NEAR(lp, l1, kTol * std::abs(l1)) << "loss at step " << step;
    if (step == 0) {
      // This rank's gradient, summed over dp, against the one-process gradient.
      for (size_t i = 0; i < par.grads().size(); ++i) {
        Tensor gsum = par.grads()[i].clone();
        grid->dp_group().all_reduce(gsum, ReduceOp::sum);
        EXPECT_LT(test::scaled_err(gsum, test::block_of(one.grads()[i], par.grads().spec(i))), kTol)
            << "gradient of " << par.grads().spec(i).name;
      }
    }
    const double n1 = opt_one.step(one.grads(), 3e-3);
    const double np = opt_par.step(3e-3);
    EXPECT_NEAR(np, n1, kTol * n1) << "gradient norm at step " << step;
  }
  for (size_t i = 0; i < par.params().size(); ++i) {
    const Tensor want = test::block_of(one.params()[i], par.params().spec(i));
    EXPECT_LT(test::scaled_err(par.params()[i], want), weight_tol(dt))
        << "weights of " << par.params().spec(i).name << " after 3 steps";
    EXPECT_LT(rel_l2(par.params()[i], want), weight_l2_tol(dt)) << "weights of " << par.params().spec(i).name << " (L2)";
  }
}

class ParallelModel : public ::testing::TestWithParam<DType> {};

TEST_P(ParallelModel, DescentMatchesOneProcess) {
  for (auto [tp, dp] : test::layouts()) {
    run_layout(tp, dp, true, 0, GetParam());
    if (dp > 1) run_layout(tp, dp, false, 0, GetParam());
  }
}

TEST_P(ParallelModel, AscentAndKlMatchOneProcess) {
  for (auto [tp, dp] : test::layouts()) run_layout(tp, dp, tp == 1, 1, GetParam());
}

// Unlearning terms that reach the model only through forward / backward / logprobs /
// hidden states run unchanged on a tensor-parallel model. (kl and adversarial read the full
// logits and must use vocab_parallel_kl / vocab_parallel_argmax_excluding instead.)
TEST(ParallelTerms, TermsWithoutFullLogitsMatchOneProcess) {
  const int tp = test::mpi_world_shared()->size();
  auto grid = ProcessGrid::from_world(test::mpi_world_shared(), {tp, 1});
  auto single = ProcessGrid::single();
  const LlamaConfig cfg = tiny();
  LlamaModel par(cfg, DType::f64, grid), one(cfg, DType::f64, single);
  LlamaModel par_ref(cfg, DType::f64, grid), one_ref(cfg, DType::f64, single);
  par.init_weights(7), one.init_weights(7), par_ref.init_weights(8), one_ref.init_weights(8);
  const Batch gb = make_batch(0);
  UnlearnBatch ub{gb.tokens, gb.targets, {0, 1, 2, 3}, 5};
  par.set_loss_chunk_rows(3);  // the loss path in chunks (one process: the whole logits)
  for (const char* type : {"nll", "random_labels", "simnpo", "wga", "flood", "rmu_forget", "rmu_retain"}) {
    SCOPED_TRACE(type);
    TermSpec spec;
    spec.type = type;
    spec.stream = "forget";
    spec.layer = 1;
    spec.seed = 3;
    spec.flood = 8.0;  // above every sequence's NLL (about log 256): each one is pushed
    auto t_par = make_term(spec, &par_ref), t_one = make_term(spec, &one_ref);
    par.grads().zero();
    one.grads().zero();
    const double l1 = t_one->accumulate(one, ub, -1.0), lp = t_par->accumulate(par, ub, -1.0);
    EXPECT_NEAR(lp, l1, 1e-10 * std::abs(l1));
    for (size_t i = 0; i < par.grads().size(); ++i)
      EXPECT_LT(test::scaled_err(par.grads()[i], test::block_of(one.grads()[i], par.grads().spec(i)), 1e-300), 1e-10)
          << par.grads().spec(i).name;
  }
}

// kl, adversarial and the Min-K%++ moments through engine/model/parallel_terms.h on every
// layout, against the one-process term objects and eval/mia.
TEST(ParallelTerms, KlAdversarialAndMomentsMatchOneProcess) {
  const LlamaConfig cfg = tiny();
  auto single = ProcessGrid::single();
  LlamaModel one(cfg, DType::f64, single), one_ref(cfg, DType::f64, single);
  one.init_weights(7), one_ref.init_weights(8);
  const Batch gb = make_batch(1);
  const UnlearnBatch ub{gb.tokens, gb.targets, {0, 1, 2, 3}, 5};
  TermSpec kl_spec, adv_spec, nll_spec;
  kl_spec.type = "kl", adv_spec.type = "adversarial", nll_spec.type = "nll";
  kl_spec.stream = adv_spec.stream = nll_spec.stream = "retain";
  one.grads().zero();
  const double kl1 = make_term(kl_spec, &one_ref)->accumulate(one, ub, -0.7);
  const ParamSet kl_grads = [&] {
    ParamSet c(one.grads().specs(), DType::f64);
    c.flat().copy_from(one.grads().flat());
    return c;
  }();
  one.grads().zero();
  const double adv1 = make_term(adv_spec, &one_ref)->accumulate(one, ub, 1.0);
  const Tensor one_logits = one.forward_logits(gb.tokens).clone();

  for (auto [tp, dp] : test::layouts()) {
    SCOPED_TRACE(::testing::Message() << "tp=" << tp << " dp=" << dp);
    auto grid = ProcessGrid::from_world(test::mpi_world_shared(), {tp, dp});
    LlamaModel par(cfg, DType::f64, grid), par_ref(cfg, DType::f64, grid);
    par.init_weights(7), par_ref.init_weights(8);
    // Both heads in chunks of 3 rows (edges inside a sequence), the one-process run in one.
    par.set_loss_chunk_rows(3), par_ref.set_loss_chunk_rows(3);
    const int64_t Bl = B / dp, r0 = Bl * grid->dp_rank();
    const Tensor tok = rows(gb.tokens, r0, Bl), tgt = rows(gb.targets, r0, Bl);
    par.grads().zero();
    const double klp = kl_to_reference(par, par_ref, tok, tgt, -0.7, true);
    EXPECT_NEAR(klp, kl1, 1e-10 * std::abs(kl1));
    for (size_t i = 0; i < par.grads().size(); ++i) {
      Tensor gsum = par.grads()[i].clone();
      grid->dp_group().all_reduce(gsum, ReduceOp::sum);
      EXPECT_LT(test::scaled_err(gsum, test::block_of(kl_grads[i], par.grads().spec(i))), 1e-10)
          << "kl gradient of " << par.grads().spec(i).name;
    }
    if (dp == 1) {  // the nll term normalises over its own rows
      par.grads().zero();
      const UnlearnBatch adv{gb.tokens, adversarial_targets(par_ref, gb.tokens, gb.targets), {0, 1, 2, 3}, 5};
      const double advp = make_term(nll_spec, nullptr)->accumulate(par, adv, 1.0);
      EXPECT_NEAR(advp, adv1, 1e-10 * std::abs(adv1));
      for (size_t i = 0; i < par.grads().size(); ++i)
        EXPECT_LT(test::scaled_err(par.grads()[i], test::block_of(one.grads()[i], par.grads().spec(i))), 1e-10)
            << "adversarial gradient of " << par.grads().spec(i).name;
    }
    par.forward_logits(tok);
    Tensor mu = Tensor::empty({Bl * T}, DType::f64), sigma = Tensor::empty({Bl * T}, DType::f64);
    logprob_moments(par, mu, sigma);
    for (int64_t i = 0; i < Bl * T; ++i) {
      double m = 0, sd = 0;
      logit_moments(one_logits.data<double>() + (r0 * T + i) * cfg.vocab_size, cfg.vocab_size, m, sd);
      EXPECT_NEAR(mu.data<double>()[i], m, 1e-10 * std::abs(m));
      EXPECT_NEAR(sigma.data<double>()[i], sd, 1e-10 * std::abs(sd));
    }
  }
}

// ZeRO buckets whose length is not a multiple of dp go through a padded copy; the others
// are reduce-scattered from the gradients and gathered in place. One parameter per bucket
// and a width of 30 (norm weights of 30 elements, 2 mod 4) make both kinds at dp = 4;
// at dp = 2 every bucket is in place. Three AdamW steps with clipping against one process.
TEST(ParallelOptimizer, PaddedAndInPlaceZeroBucketsMatchOneProcess) {
  LlamaConfig c = tiny();
  c.dim = 30;
  c.n_heads = 3;
  c.n_kv_heads = 1;
  c.ffn_dim = 82;
  const int dp = test::mpi_world_shared()->size();
  run_layout(1, dp, true, 0, DType::f64, false, "adamw", c, 1);
}

TEST(ParallelOptimizer, SgdAndFrozenTensorsMatchOneProcess) {
  for (auto [tp, dp] : test::layouts()) {
    run_layout(tp, dp, true, 0, DType::f64, false, "sgd");
    run_layout(tp, dp, true, 0, DType::f64, false, "frozen");
  }
}

// World rank 0 writes a transformers directory of tiny() whose entries are all distinct
// (init_weights' norms are all 1), so a block read from the wrong offset shows; then every
// rank waits for it.
void write_distinct_hf(Communicator& w, const std::string& dir, DType dtype) {
  if (w.rank() == 0) {
    LlamaModel src(tiny());
    float* x = src.params().flat().data<float>();
    for (int64_t i = 0; i < src.params().flat().numel(); ++i) x[i] = 0.05f * std::sin(0.37f * float(i) + 0.1f);
    std::vector<std::pair<std::string, Tensor>> t;
    for (size_t i = 0; i < src.params().size(); ++i) t.emplace_back(src.params().spec(i).name, src.params()[i].to(dtype));
    std::filesystem::remove_all(dir);
    write_hf_model(dir, hf_config_from_llama(tiny(), dtype == DType::bf16 ? "bfloat16" : "float32"), t,
                   int64_t(1) << 30);
  }
  w.barrier();
}

// Under bf16 on a grid, a load sets each rank's share of the fp32 master (its ZeRO pieces,
// or its whole tp slice without ZeRO) to the stored f32 weights, not their bf16 rounding:
// every piece equals the same block loaded into an f32 model on the same grid.
TEST(ParallelOptimizer, Bf16MasterPiecesHoldTheStoredWeightsOnEveryLayout) {
  auto w = test::mpi_world_shared();
  const std::string dir = (std::filesystem::temp_directory_path() / "lethe_par_master_hf").string();
  write_distinct_hf(*w, dir, DType::f32);
  const ModelSource source = ModelSource::open(dir);
  for (auto [tp, dp] : test::layouts())
    for (const bool zero1 : {true, false}) {
      auto grid = ProcessGrid::from_world(w, {tp, dp, zero1});
      LlamaModel m(tiny(), Precision::bf16, grid), f32(tiny(), DType::f32, grid);
      RunOptimizer opt(m.params(), m.grads(), OptimConfig{}, *grid, Precision::bf16);
      load_weights(m, source, &opt);
      load_weights(f32, source);
      const std::string at = "tp" + std::to_string(tp) + " dp" + std::to_string(dp) + (zero1 ? " zero1" : "");
      ASSERT_TRUE(opt.par) << at;
      int64_t checked = 0;
      for (const auto& p : opt.par->pieces()) {
        const Tensor want = f32.params()[p.param].reshape({f32.params()[p.param].numel()}).view(p.param_begin, {p.count});
        const Tensor got = opt.par->master().view(p.shard_begin, {p.count});
        for (int64_t i = 0; i < p.count; ++i)
          ASSERT_EQ(got.data<float>()[i], want.data<float>()[i]) << at << " " << m.params().spec(p.param).name;
        checked += p.count;
      }
      EXPECT_GT(checked, 0) << at;
      // The master is not the model's weights: the first forward rounds those.
      m.forward(make_batch(0).tokens.slice_rows(0, 1), make_batch(0).targets.slice_rows(0, 1));
      int64_t rounded = 0;
      for (const auto& p : opt.par->pieces())
        for (int64_t i = 0; i < p.count; ++i)
          rounded += m.params()[p.param].reshape({m.params()[p.param].numel()}).view(p.param_begin, {p.count})
                         .data<float>()[i] != opt.par->master().view(p.shard_begin, {p.count}).data<float>()[i];
      EXPECT_GT(rounded, checked / 2) << at;
    }
  w->barrier();
  if (w->rank() == 0) std::filesystem::remove_all(dir);
}

// A load on a grid: world rank 0 reads every weight whole and hashes it; every other rank
// reads only the blocks it keeps (each tp rank's rows or columns of a split weight, the
// replicated ones whole), and every rank gets rank 0's digest, the one-process digest.
TEST(ParallelLoad, RanksOtherThanZeroReadOnlyTheirBlocksAndShareTheDigest) {
  auto w = test::mpi_world_shared();
  const std::string dir = (std::filesystem::temp_directory_path() / "lethe_par_load_hf").string();
  write_distinct_hf(*w, dir, DType::bf16);
  const ModelSource source = ModelSource::open(dir);
  const LoadedModel whole = load_model(dir);  // every process: the reference, read whole
  uint64_t whole_bytes = 0;
  for (const auto& [n, t] : whole.weights) whole_bytes += t.nbytes();
  for (auto [tp, dp] : test::layouts()) {
    auto grid = ProcessGrid::from_world(w, {tp, dp, true});
    LlamaModel m(tiny(), DType::f32, grid);
    const uint64_t before = SafetensorsFile::bytes_read();
    const std::string sha = load_weights(m, source);
    const uint64_t read = SafetensorsFile::bytes_read() - before;
    const std::string at = "tp" + std::to_string(tp) + " dp" + std::to_string(dp) + " rank " + std::to_string(w->rank());
    EXPECT_EQ(sha, whole.sha256) << at;
    uint64_t kept = 0;
    for (size_t i = 0; i < m.params().size(); ++i) {
      const ParamSpec& s = m.params().spec(i);
      kept += uint64_t(shape_numel(s.shape)) * 2;  // bf16 as stored
      const Tensor& all = whole.weights[i].second;
      const Tensor& p = m.params()[i];
      for (int64_t k = 0; k < p.numel(); ++k) {
        int64_t r = k, c = 0;
        if (p.ndim() == 2) r = k / p.dim(1), c = k % p.dim(1);
        if (s.shard_dim == 0) r += s.shard_offset;
        if (s.shard_dim == 1) c += s.shard_offset;
        const int64_t src_k = all.ndim() == 2 ? r * all.dim(1) + c : r;
        ASSERT_EQ(p.data<float>()[k], bf16_to_float(all.data<bf16>()[src_k])) << at << " " << s.name << " [" << k << "]";
      }
    }
    EXPECT_EQ(read, w->rank() == 0 ? whole_bytes : kept) << at;
    if (tp > 1 && w->rank() != 0) {
      EXPECT_LT(read, whole_bytes) << at;
    }
  }
  w->barrier();
  if (w->rank() == 0) std::filesystem::remove_all(dir);
}

TEST(ParallelModelRecompute, RecomputedLayersMatchOneProcess) {
  for (auto [tp, dp] : test::layouts()) run_layout(tp, dp, true, 1, DType::f64, true);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ParallelModel, ::testing::Values(DType::f64, DType::f32),
                         [](const auto& i) { return std::string(dtype_name(i.param)); });

// The vocabulary-parallel loss on a device: each chunk's row statistics are all-reduced
// and finished on the device and the loss summed there, so the host's waits
// (ScopedHostStagedDevice::host_transfers; the staged collectives stand in for NCCL's and
// are not counted) are as many with 13 chunks as with one, for the cross-entropy and for
// the KL. The losses equal the emulated (CPU, bf16) model's on the same layout bit for bit.
TEST(ParallelDevice, VocabParallelLossChunksDoNotWaitForTheHost) {
  const int world = test::mpi_world_shared()->size();
  if (world % 2) GTEST_SKIP() << "needs tp=2";
  const ParallelConfig layout{2, world / 2, false};
  const LlamaConfig cfg = tiny();
  auto cpu_grid = ProcessGrid::from_world(test::mpi_world_shared(), layout);
  LlamaModel cpu(cfg, Precision::bf16, cpu_grid), cpu_ref(cfg, Precision::bf16, cpu_grid);
  ScopedHostStagedDevice device;
  auto grid = ProcessGrid::create(layout, Device::cuda);
  LlamaModel dev(cfg, Precision::bf16, grid, Device::cuda), ref(cfg, Precision::bf16, grid, Device::cuda);
  for (LlamaModel* m : {&cpu, &dev}) m->init_weights(7);
  for (LlamaModel* m : {&cpu_ref, &ref}) m->init_weights(8), m->set_forward_only(true);
  const Batch gb = make_batch(0);
  const int64_t Bl = B / grid->dp(), r0 = Bl * grid->dp_rank(), Nl = Bl * T;
  const Tensor tok = rows(gb.tokens, r0, Bl), tgt = rows(gb.targets, r0, Bl), w = rows(gb.weights, r0, Bl);
  struct Waits {
    int64_t step = 0, kl = 0;
    double loss = 0, kl_value = 0;
  };
  auto run = [&](LlamaModel& m, LlamaModel& r, int64_t chunk_rows) {
    m.set_loss_chunk_rows(chunk_rows);
    r.set_loss_chunk_rows(chunk_rows);
    Waits x;
    const int64_t t0 = device.host_transfers();
    x.loss = m.forward(tok, tgt, &w);
    m.backward();
    const int64_t t1 = device.host_transfers();
    x.kl_value = kl_to_reference(m, r, tok, tgt, 0.5, true);
    x.step = t1 - t0;
    x.kl = device.host_transfers() - t1;
    return x;
  };
  run(dev, ref, Nl);  // the first pass also uploads what is kept (RoPE tables)
  const Waits one = run(dev, ref, Nl), many = run(dev, ref, 5);
  EXPECT_EQ(many.step, one.step) << "forward and backward in " << (Nl + 4) / 5 << " chunks against one";
  EXPECT_EQ(many.kl, one.kl) << "the KL's head pass in " << (Nl + 4) / 5 << " chunks against one";
  // As one process: the batch's three uploads and the loss read; the KL's row weights,
  // two trunks' tokens and its sum.
  EXPECT_EQ(one.step, 4);
  EXPECT_EQ(one.kl, 4);
  const Waits emulated = run(cpu, cpu_ref, 5);
  EXPECT_EQ(many.loss, emulated.loss);
  EXPECT_EQ(many.kl_value, emulated.kl_value);
}

TEST(ParallelModelConfig, LayoutErrorsNameTheDimension) {
  auto w = test::mpi_world_shared();
  if (w->size() < 2) GTEST_SKIP() << "needs tp > 1";
  auto grid = ProcessGrid::from_world(w, {w->size(), 1});
  LlamaConfig c = tiny();
  c.ffn_dim = 175;
  try {
    LlamaModel m(c, DType::f32, grid);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ffn_dim % tp == 0"), std::string::npos) << e.what();
  }
}

// Debug mode under tp: a replicated weight (a norm) that differs on one tp rank, the drift
// that a device's fp32 atomics would cause if the ranks did not agree on the gradients,
// stops every rank at the next forward with the same error naming the weight and the rank.
TEST(ParallelModelDebug, ReplicaDriftStopsEveryRank) {
  const int tp = test::mpi_world_shared()->size();
  if (tp < 2) GTEST_SKIP() << "needs a tp group";
  auto grid = ProcessGrid::from_world(test::mpi_world_shared(), {tp, 1});
  LlamaModel par(tiny(), DType::f32, grid);
  par.init_weights(7);
  const Batch b = make_batch(0);
  set_debug_mode(true);
  EXPECT_NO_THROW(par.forward(b.tokens, b.targets));
  const std::string name = "model.layers.1.post_attention_layernorm.weight";
  if (grid->tp_rank() == tp - 1) par.params().get(name).data<float>()[3] += 1e-3f;
  try {
    par.forward(b.tokens, b.targets);
    ADD_FAILURE() << "a drifted replica passed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(name + ": tensor-parallel rank " + std::to_string(tp - 1)), std::string::npos)
        << e.what();
  }
  set_debug_mode(false);
}

}  // namespace
}  // namespace lethe
