#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <iostream>
#include <memory>

#include "engine/cli/commands.h"
#include "engine/core/log.h"
#include "engine/data/sequence_sampler.h"
#include "engine/data/token_dataset.h"
#include "engine/data/token_stream.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/model_config_yaml.h"
#include "engine/io/optim_config_yaml.h"
#include "engine/io/sha256.h"
#include "engine/model/llama.h"
#include "engine/model/tp_layout.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/schedule.h"
#include "engine/io/optimizer_checkpoint.h"
#include "engine/io/run_checkpoint.h"
#include "engine/model/run_device.h"
#include "engine/optim/run_optimizer.h"
#include "engine/plan/device_fit.h"
#include "engine/run/step_loop.h"
#include "kernels/device.h"
#include "kernels/cpu/blas_kernel.h"
#include "kernels/cross_entropy.h"
#include "engine/parallel/failure.h"
#include "engine/parallel/grid.h"
#include "engine/parallel/stop_request.h"

namespace lethe::cli {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

struct TrainConfig {
  LlamaConfig model;
  std::vector<std::string> data_paths;
  std::vector<std::string> data_sha256;  // of each data file, hashed once at start (resume checks them)
  std::string data_format = "auto";
  int64_t min_targets = 1;
  bool pack = false;
  int64_t steps = 100, run_steps = 0, batch_size = 8, seq_len = 64, log_every = 10, threads = 0;
  uint64_t seed = 1234;
  int64_t recompute_layers = 0;
  bool resume = false;
  std::string init_from;  // checkpoint whose weights start the run
  std::string ckpt_dir;
  int64_t ckpt_every = 0, ckpt_keep = 0;
  OptimConfig optim;
  LRSchedule schedule;
  ParallelConfig parallel;
  int64_t grad_accum = 1;  // micro-batches per step (per data-parallel rank)
  DeviceChoice device = DeviceChoice::automatic;
  std::optional<Precision> precision;  // unset: the device's default
  std::string device_key = "train.device";
};

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  // `model:` may be a path to configs/models/*.yaml or an inline mapping; `model.x=v`
  // overrides go to whichever holds the model.
  const bool model_is_path = [&] {
    ConfigNode peek = ConfigNode::load_file(path);
    return peek.has("model") && !peek.is_map("model");
  }();
  std::vector<std::string> train_ov, model_ov;
  for (const auto& o : overrides) {
    if (model_is_path && starts_with(o, "model.")) model_ov.push_back(o.substr(6));
    else train_ov.push_back(o);
  }
  const ConfigNode root = ConfigNode::load_file(path, train_ov);
  TrainConfig c;
  if (model_is_path) c.model = load_llama_config(root.path("model"), model_ov);
  else c.model = llama_config_from_node(root.child("model"));

  const ConfigNode d = root.child("data");
  c.data_paths = d.paths("path");
  c.data_format = d.get<std::string>("format", c.data_format);
  c.min_targets = d.get<int64_t>("min_targets", c.min_targets);
  c.pack = d.get<bool>("pack", c.pack);
  d.finish();
  if (c.data_format == "auto") {
    const std::string ext = fs::path(c.data_paths[0]).extension().string();
    c.data_format = (ext == ".h5" || ext == ".hdf5") ? "hdf5" : "bytes";
  }
  LETHE_CHECK(c.data_paths.size() == 1 || c.data_format == "hdf5", d.where("path"),
              ": several files are supported for HDF5 token datasets only");
  LETHE_CHECK(c.data_format == "hdf5" || c.data_format == "bytes" || c.data_format == "u16" || c.data_format == "i32",
              d.where("format"), ": must be auto, hdf5, bytes, u16 or i32, got '", c.data_format, "'");

  c.device_key = root.where("train.device");
  if (root.has("train")) {
    const ConfigNode t = root.child("train");
    c.steps = t.get<int64_t>("steps", c.steps);
    c.run_steps = t.get<int64_t>("run_steps", c.run_steps);
    c.batch_size = t.get<int64_t>("batch_size", c.batch_size);
    c.seq_len = t.get<int64_t>("seq_len", c.seq_len);
    c.seed = uint64_t(t.get<int64_t>("seed", int64_t(c.seed)));
    c.log_every = t.get<int64_t>("log_every", c.log_every);
    c.threads = t.get<int64_t>("threads", c.threads);
    c.resume = t.get<bool>("resume", c.resume);
    c.grad_accum = t.get<int64_t>("grad_accum", c.grad_accum);
    if (t.has("init_from")) c.init_from = t.path("init_from");
    if (t.has("device")) c.device = parse_device_choice(t.require<std::string>("device"), t.where("device"));
    if (t.has("precision")) c.precision = parse_precision(t.require<std::string>("precision"), t.where("precision"));
    // recompute: true/false for all layers, or a count of layers (the first ones).
    if (t.has("recompute")) {
      try {
        c.recompute_layers = t.require<bool>("recompute") ? c.model.n_layers : 0;
      } catch (const Error&) {
        c.recompute_layers = t.require<int64_t>("recompute");
      }
      LETHE_CHECK(c.recompute_layers >= 0 && c.recompute_layers <= c.model.n_layers, t.where("recompute"),
                  ": must be true, false or a layer count in [0, ", c.model.n_layers, "]");
    }
    t.finish();
    LETHE_CHECK(c.steps >= 1, t.where("steps"), ": must be >= 1");
    LETHE_CHECK(c.run_steps >= 0, t.where("run_steps"), ": must be >= 0 (0 = run to the end)");
    LETHE_CHECK(c.batch_size >= 1, t.where("batch_size"), ": must be >= 1");
    LETHE_CHECK(c.seq_len >= 1 && c.seq_len <= c.model.max_seq_len, t.where("seq_len"), ": must be in [1, ",
                c.model.max_seq_len, "] (the model's max_seq_len)");
    LETHE_CHECK(c.log_every >= 1, t.where("log_every"), ": must be >= 1");
    LETHE_CHECK(c.threads >= 0, t.where("threads"), ": must be >= 0 (0 = all cores)");
    LETHE_CHECK(c.grad_accum >= 1, t.where("grad_accum"), ": must be >= 1");
  }
  if (root.has("parallel")) {
    const ConfigNode p = root.child("parallel");
    c.parallel.tp = int(p.get<int64_t>("tp", c.parallel.tp));
    c.parallel.dp = int(p.get<int64_t>("dp", c.parallel.dp));
    c.parallel.zero1 = p.get<bool>("zero1", c.parallel.zero1);
    c.parallel.bucket_elements = p.get<int64_t>("bucket_elements", c.parallel.bucket_elements);
    p.finish();
    LETHE_CHECK(c.parallel.tp >= 1, p.where("tp"), ": must be >= 1");
    LETHE_CHECK(c.parallel.dp >= 1, p.where("dp"), ": must be >= 1");
    LETHE_CHECK(c.parallel.bucket_elements >= 1, p.where("bucket_elements"), ": must be >= 1");
    try {
      TpLayout::make(c.model, c.parallel.tp, 0);
    } catch (const Error& e) {
      LETHE_FAIL(p.where("tp"), ": ", e.what());
    }
  }
  LETHE_CHECK(c.batch_size % (c.parallel.dp * c.grad_accum) == 0, path, ": train.batch_size (", c.batch_size,
              ") must be a multiple of parallel.dp * train.grad_accum (", c.parallel.dp * c.grad_accum, ")");
  if (root.has("checkpoint")) {
    const ConfigNode k = root.child("checkpoint");
    c.ckpt_dir = k.path("dir");
    c.ckpt_every = k.get<int64_t>("every", c.ckpt_every);
    c.ckpt_keep = k.get<int64_t>("keep_last", c.ckpt_keep);
    k.finish();
    LETHE_CHECK(c.ckpt_every >= 0, k.where("every"), ": must be >= 0 (0 = only at the end)");
    LETHE_CHECK(c.ckpt_keep >= 0, k.where("keep_last"), ": must be >= 0 (0 = keep all)");
  }
  if (root.has("optimizer")) read_optimizer_section(root.child("optimizer"), c.steps, c.optim, c.schedule);
  c.schedule.total_steps = c.steps;
  root.finish();
  LETHE_CHECK(!c.resume || !c.ckpt_dir.empty(), path, ": train.resume needs checkpoint.dir");
  return c;
}

// What makes two runs "the same run": everything but the step count and logging. A
// checkpoint directory only continues the run that created it.
json run_fingerprint(const TrainConfig& c) {
  return {{"model", llama_config_to_json(c.model)},
          {"data", {{"files", [&] {
                       json f = json::array();
                       for (const auto& p : c.data_paths) f.push_back(fs::path(p).filename().string());
                       return f;
                     }()},
                     {"format", c.data_format},
                    {"min_targets", c.min_targets}, {"pack", c.pack}}},
          {"data_sha256", [&] {
             json h = json::array();
             for (const auto& d : c.data_sha256) h.push_back(d);
             return h;
           }()},
          {"batch_size", c.batch_size},
          {"seq_len", c.seq_len},
          {"seed", c.seed},
          {"optimizer", {{"type", c.optim.type}, {"beta1", c.optim.beta1}, {"beta2", c.optim.beta2},
                         {"eps", c.optim.eps}, {"weight_decay", c.optim.weight_decay},
                         {"momentum", c.optim.momentum}, {"grad_clip", c.optim.grad_clip}}},
          {"schedule", {{"type", c.schedule.type}, {"lr", c.schedule.lr}, {"min_lr", c.schedule.min_lr},
                        {"warmup_steps", c.schedule.warmup_steps}}}};
}

// Batches from either a token dataset (documents, seed-study chunks, cursor) or a raw
// token stream (random windows indexed by step).
class Batches {
 public:
  explicit Batches(const TrainConfig& c) {
    if (c.data_format == "hdf5") {
      std::vector<TokenDataset> parts;
      for (const auto& p : c.data_paths) parts.push_back(load_token_dataset(p, c.model.vocab_size));
      ds_ = std::make_unique<TokenDataset>(concat_token_datasets(parts));
      SamplerConfig sc;
      sc.seq_len = c.seq_len;
      sc.min_targets = c.min_targets;
      sc.pack = c.pack;
      sc.seed = c.seed;
      sampler_ = std::make_unique<SequenceSampler>(*ds_, sc);
      n_tokens_ = ds_->n_tokens();
    } else {
      stream_ = std::make_unique<TokenStream>(load_token_stream(c.data_paths[0], c.data_format, c.model.vocab_size));
      window_ = std::make_unique<WindowSampler>(*stream_, c.seq_len, c.seed);
      n_tokens_ = int64_t(stream_->tokens.size());
    }
  }
  void next(int64_t step, Tensor& tokens, Tensor& targets) {
    if (sampler_) sampler_->next(tokens, targets);
    else window_->batch(step, tokens, targets);
  }
  json cursor() const {
    if (!sampler_) return {{"kind", "window"}};
    return {{"kind", "sequence"}, {"epoch", sampler_->cursor().epoch}, {"index", sampler_->cursor().index}};
  }
  void restore(const json& j, const std::string& where) {
    if (!sampler_) return;
    LETHE_CHECK(j.value("kind", "") == "sequence", where, ": data cursor is not a sequence cursor");
    sampler_->set_cursor({j.at("epoch").get<int64_t>(), j.at("index").get<int64_t>()});
  }
  int64_t n_tokens() const { return n_tokens_; }

 private:
  std::unique_ptr<TokenDataset> ds_;
  std::unique_ptr<SequenceSampler> sampler_;
  std::unique_ptr<TokenStream> stream_;
  std::unique_ptr<WindowSampler> window_;
  int64_t n_tokens_ = 0;
};

void fill_manifest(json& m, const TrainConfig& c, const LlamaModel& model, const RunOptimizer& opt,
                   const Batches& data, int64_t step, double loss) {
  m["kind"] = "train";
  m["step"] = step;
  m["model"] = llama_config_to_json(c.model);
  m["run"] = run_fingerprint(c);
  m["optimizer"] = {{"type", c.optim.type}, {"steps_taken", opt.steps_taken()}};
  m["data"] = {{"cursor", data.cursor()}};
  m["rng"] = {{"generator", "philox4x32-10"}, {"seed", c.seed}};
  m["metrics"] = {{"loss", loss}};
  m["parallel"] = {{"tp", c.parallel.tp}, {"dp", c.parallel.dp}, {"zero1", c.parallel.zero1 && c.parallel.dp > 1}};
  m["dtype"] = dtype_name(model.dtype());
  m["precision"] = precision_name(model.precision());
  m["lethe_version"] = LETHE_VERSION;
}

void save_checkpoint(const TrainConfig& c, LlamaModel& model, RunOptimizer& opt, const Batches& data, int64_t step,
                     double loss, std::ostream& out) {
  const std::string dir = save_checkpoint_all_ranks(
      c.ckpt_dir, checkpoint_name(step), model, &opt, /*update_latest=*/true,
      [&](CheckpointWriter& w) { fill_manifest(w.manifest(), c, model, opt, data, step, loss); });
  if (model.grid().rank() == 0) {
    prune_checkpoints(c.ckpt_dir, c.ckpt_keep);
    out << "saved " << dir << std::endl;
  }
}

// Returns the step to start from (0 for a fresh run).
int64_t restore_or_check(const TrainConfig& c, LlamaModel& model, RunOptimizer& opt, Batches& data,
                         std::ostream& out) {
  if (c.ckpt_dir.empty()) return 0;
  const std::string latest = latest_checkpoint(c.ckpt_dir);
  if (latest.empty()) return 0;
  const Checkpoint ck = Checkpoint::open(latest);
  const json& m = ck.manifest();
  const std::string where = latest + "/manifest.json";
  LETHE_CHECK(c.resume, c.ckpt_dir, ": already holds a run (", fs::path(latest).filename().string(),
              "); set train.resume=true to continue it, or choose another checkpoint.dir");
  LETHE_CHECK(m.value("kind", "") == "train" && m.contains("run"), where, ": not a training checkpoint");
  const json want = run_fingerprint(c);
  for (auto it = want.begin(); it != want.end(); ++it) {
    if (it.key() == "data_sha256") continue;
    LETHE_CHECK(m["run"].contains(it.key()) && m["run"][it.key()] == it.value(), c.ckpt_dir,
                ": holds a different run: its '", it.key(), "' settings differ from this config's");
  }
  // Same file names with other contents (a re-tokenised or regenerated corpus) would resume
  // the cursor into different documents. Checkpoints written before the hashes were
  // recorded resume with a warning.
  if (!m["run"].contains("data_sha256")) {
    out << "warning: " << where << " records no data hashes (an older checkpoint): the data files' contents "
        << "are not checked against the run's" << std::endl;
  } else {
    const json& had = m["run"]["data_sha256"];
    const json& now = want["data_sha256"];
    LETHE_CHECK(had.size() == now.size(), c.ckpt_dir, ": holds a different run: it trained on ", had.size(),
                " data files, this config names ", now.size());
    for (size_t i = 0; i < now.size(); ++i)
      LETHE_CHECK(had[i] == now[i], c.ckpt_dir, ": holds a different run: the contents of ", c.data_paths[i],
                  " differ from the file it trained on (sha256 ", had[i].get<std::string>().substr(0, 16), "..., now ",
                  now[i].get<std::string>().substr(0, 16), "...); choose another checkpoint.dir to train on it");
  }
  // Any layout loads into any other: each rank reads its blocks of the whole tensors.
  check_resume_precision(m, model.precision(), c.ckpt_dir, "train.precision");
  load_params(ck, "weights", model.params());
  load_optimizer_state(ck, opt, model.params(), latest);
  opt.set_steps_taken(m.at("optimizer").at("steps_taken").get<int64_t>());
  data.restore(m.at("data").at("cursor"), where);
  const int64_t step = m.at("step").get<int64_t>();
  out << "resumed from " << latest << " at step " << step << std::endl;
  return step;
}


// Rows [r0, r0 + n) of a [B, T] batch.
Tensor rows_of(const Tensor& t, int64_t r0, int64_t n) { return t.slice_rows(r0, r0 + n).clone(); }

// One optimizer step's loss and gradients on a grid: this dp rank's rows of the global
// batch, in grad_accum micro-batches, each token weighted 1 / (real targets of the whole
// global batch), so the sum equals the one-process mean loss.
double parallel_loss_and_grads(const TrainConfig& c, LlamaModel& model, RunOptimizer& opt, const Tensor& tokens,
                               const Tensor& targets) {
  ProcessGrid& g = model.grid();
  const int32_t* tg = targets.data<int32_t>();
  int64_t valid = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) valid += tg[i] != ops::kIgnoreIndex;
  const int64_t micro = c.batch_size / (g.dp() * c.grad_accum);
  double loss = 0;
  for (int64_t k = 0; k < c.grad_accum; ++k) {
    const int64_t r0 = (g.dp_rank() * c.grad_accum + k) * micro;
    const Tensor tok = rows_of(tokens, r0, micro), tgt = rows_of(targets, r0, micro);
    Tensor w = Tensor::zeros({micro, c.seq_len}, DType::f64);
    for (int64_t i = 0; i < w.numel(); ++i)
      w.data<double>()[i] = (tgt.data<int32_t>()[i] != ops::kIgnoreIndex && valid) ? 1.0 / double(valid) : 0.0;
    // The dp all-reduce overlaps the last micro-batch's backward only: earlier ones still
    // add into the buffers.
    if (k + 1 == c.grad_accum && opt.par) model.set_grad_ready_hook([&](size_t i) { opt.par->grad_ready(i); });
    else model.set_grad_ready_hook(nullptr);
    loss += model.forward(tok, tgt, &w);
    model.backward();
  }
  model.set_grad_ready_hook(nullptr);
  return loss;
}

// What `lethe plan` is told about this run on a device (bf16 mixed precision).
plan::PlanInput device_plan_input(const TrainConfig& c) {
  plan::PlanInput in;
  in.model = c.model;
  in.tp = c.parallel.tp;
  in.dp = c.parallel.dp;
  in.zero1 = c.parallel.zero1;
  in.micro_batch = std::max<int64_t>(1, c.batch_size / (int64_t(c.parallel.dp) * c.grad_accum));
  in.seq_len = c.seq_len;
  in.precision = Precision::bf16;
  in.recompute = c.recompute_layers;
  in.recipe.grad_accum = c.grad_accum;
  in.recipe.optimizer_states = c.optim.type == "adamw" ? 2 : c.optim.momentum != 0 ? 1 : 0;
  return in;
}

TrainSummary train_on_grid(const TrainConfig& c, const RunDevice& dev, std::shared_ptr<ProcessGrid> grid,
                           std::ostream& out) {
  Batches data(c);
  const bool one_process = !grid->parallel();
  LlamaModel model(c.model, dev.precision, grid, dev.device);
  model.init_weights(c.seed);
  std::unique_ptr<Checkpoint> init;
  if (!c.init_from.empty()) {
    init = std::make_unique<Checkpoint>(Checkpoint::open(c.init_from));
    load_params(*init, "weights", model.params());
  }
  model.set_recompute_layers(c.recompute_layers);
  RunOptimizer opt(model.params(), model.grads(), c.optim, *grid, dev.precision);
  if (init) load_master_weights(*init, opt, model.params());
  const int64_t start = restore_or_check(c, model, opt, data, out);
  const int64_t end = c.run_steps > 0 ? std::min(c.steps, start + c.run_steps) : c.steps;

  char line[256];
  std::snprintf(line, sizeof line, "model %s: %.2fM params | data %lld tokens | batch %lld x %lld | %s, %d threads",
                c.model.name.c_str(), double(c.model.n_params()) / 1e6, (long long)data.n_tokens(),
                (long long)c.batch_size, (long long)c.seq_len, c.optim.type.c_str(), omp_get_max_threads());
  out << blas_kernel_line() << "\n" << dev.line << "\n" << line << std::endl;
  if (!one_process)
    out << "parallel: tp=" << grid->tp() << " x dp=" << grid->dp() << " over " << grid->world_size() << " ranks ("
        << grid->backend() << ")" << (grid->zero1() ? ", ZeRO-1" : "")
        << (c.grad_accum > 1 ? ", " + std::to_string(c.grad_accum) + " micro-batches per step" : "") << std::endl;

  Tensor tokens = Tensor::empty({c.batch_size, c.seq_len}, DType::i32);
  Tensor targets = Tensor::empty({c.batch_size, c.seq_len}, DType::i32);
  TrainSummary summary;
  double timed_seconds = 0, loss = NAN, reduce_wait = 0, gather_wait = 0;
  int64_t timed_tokens = 0;
  const double flops_per_token = c.model.train_flops_per_token(c.seq_len);
  // Testing hook for tools/drills/nan_stop.sh: LETHE_TEST_INJECT_NAN_STEP=k turns step k's
  // loss into NaN, to prove that a NaN stops the run before anything is written over.
  const char* nan_env = std::getenv("LETHE_TEST_INJECT_NAN_STEP");
  const int64_t nan_step = nan_env ? std::atoll(nan_env) : 0;
  StepHooks hooks;
  hooks.accumulate = [&](int64_t step) {
    data.next(step, tokens, targets);
    if (one_process && c.grad_accum == 1) {
      loss = model.forward(tokens, targets);
      if (step + 1 == nan_step) loss = NAN;
      // Stop before the update, and before any checkpoint could record a broken state.
      LETHE_CHECK(std::isfinite(loss), "loss is ", loss, " at step ", step + 1, "; stopping before the update");
      model.backward();
    } else {
      loss = parallel_loss_and_grads(c, model, opt, tokens, targets);
      if (step + 1 == nan_step) loss = NAN;
      // The loss is the global batch's, the same on every rank: all stop together.
      LETHE_CHECK(std::isfinite(loss), "loss is ", loss, " at step ", step + 1, "; stopping before the update");
    }
    return loss;
  };
  hooks.after_update = [&](const StepInfo& s) {
    summary.losses.push_back(s.loss);
    const int64_t ntok = c.batch_size * c.seq_len;
    if (s.step - 1 > start || end - start == 1) {  // the first step pays for allocation
      timed_seconds += s.seconds;
      timed_tokens += ntok;
      if (opt.par) {
        reduce_wait += opt.par->last_comm_wait().reduce_s;
        gather_wait += opt.par->last_comm_wait().gather_s;
      }
    }
    if ((s.step - 1) % c.log_every == 0 || s.step == end) {
      std::snprintf(line, sizeof line, "step %5lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s",
                    (long long)s.step, (long long)c.steps, s.loss, s.lr, s.grad_norm, double(ntok) / s.seconds);
      out << line << std::endl;
    }
    return false;
  };
  if (!c.ckpt_dir.empty())
    hooks.checkpoint = [&](int64_t steps) { save_checkpoint(c, model, opt, data, steps, loss, out); };
  StepLoopConfig lc;
  lc.first = start;
  lc.stop_at = end;
  lc.total = c.steps;
  lc.checkpoint_every = c.ckpt_every;
  lc.checkpoint_at_end = true;
  const StepLoopResult done = run_step_loop(model, opt, c.schedule, lc, hooks);
  if (done.stopped_by) {
    out << "stopped by " << stop_signal_name(done.stopped_by) << " after step " << done.steps_run << " of "
        << c.steps << "; the checkpoint is saved: run again with train.resume=true to continue" << std::endl;
    summary.stopped_by = done.stopped_by;
  }
  if (summary.losses.empty()) {
    out << "nothing to do: the run is already at step " << start << " of " << c.steps << std::endl;
    return summary;
  }
  summary.tokens_per_s = timed_seconds > 0 ? double(timed_tokens) / timed_seconds : 0;
  summary.mfu_flops = summary.tokens_per_s * flops_per_token;
  std::snprintf(line, sizeof line,
                "done: loss %.4f -> %.4f | %.0f tok/s | %.2f GFLOP/s model FLOPs (%.3g FLOP/token)",
                summary.losses.front(), summary.losses.back(), summary.tokens_per_s, summary.mfu_flops / 1e9,
                flops_per_token);
  out << line << std::endl;
  if (dev.device != Device::cpu) out << plan::device_memory_line("training", device_allocator().stats(),
                                                                plan::memory_plan(device_plan_input(c)).total())
                                     << std::endl;
  if (opt.par && grid->dp() > 1 && timed_seconds > 0 && grid->dp_group().backend() == "nccl") {
    // NCCL's waits are the compute stream's, not the host's: host clocks would read ~0.
    out << "dp communication waited for: not measured on NCCL (the compute stream waits, not the host)" << std::endl;
  } else if (opt.par && grid->dp() > 1 && timed_seconds > 0) {
    // What the overlap did not hide, measured: the reduction still running when the
    // backward ended, and what of ZeRO-1's weight all-gathers the step waited for.
    std::snprintf(line, sizeof line,
                  "dp communication waited for: gradient reduction %.1f%% of step time, weight all-gather %.1f%%",
                  100 * reduce_wait / timed_seconds, 100 * gather_wait / timed_seconds);
    out << line << std::endl;
  }
  return summary;
}

}  // namespace

TrainSummary run_train(const std::string& config_path, const std::vector<std::string>& overrides, std::ostream& out) {
  TrainConfig c = load_train_config(config_path, overrides);
  if (!c.ckpt_dir.empty())  // only checkpoints record them
    for (const auto& p : c.data_paths) c.data_sha256.push_back(to_hex(sha256_file(p)));
  // Refuse a model that cannot fit before allocating it: with memory overcommit a huge
  // allocation succeeds and the kernel kills the process when the pages are touched. On a
  // GPU the device holds the run, by the GPU engine's plan.
  if (const std::vector<DeviceInfo> gpus = cuda_devices(); c.device == DeviceChoice::cuda && !gpus.empty()) {
    plan::check_device_fit(device_plan_input(c), config_path, gpus[0].name, double(gpus[0].memory_bytes));
  } else {
    const double n = double(c.model.n_params());
    const double need = 16.0 * n / c.parallel.tp;  // f32 weights, grads, two AdamW moments
    const double have = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
    LETHE_CHECK(n > 0 && (have <= 0 || need <= have), config_path, ": model '", c.model.name, "' has ", n,
                " parameters and needs about ", need / 1e9, " GB for weights, gradients and optimizer state; this "
                "machine has ", have / 1e9, " GB");
  }
  const RunDevice dev = resolve_run_device(c.device, c.precision, c.device_key);
  if (c.threads > 0) omp_set_num_threads(int(c.threads));
  // With checkpoints a stop signal saves and exits; without, it keeps its default action.
  if (!c.ckpt_dir.empty()) install_stop_handlers();
  auto grid = ProcessGrid::create(c.parallel, dev.device);
  // Only rank 0 reports; the others' lines would repeat it.
  std::ostream null_out(nullptr);
  return train_on_grid(c, dev, grid, grid->rank() == 0 ? out : null_out);
}


int train_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    (args.empty() ? std::cerr : std::cout) << "usage: lethe train CONFIG.yaml [key=value ...]\n"
                 "  Trains (gradient descent) on a token file and prints step, loss, tokens/s.\n"
                 "  Overrides use dotted keys: train.steps=50 optimizer.lr=1e-3 model.n_layers=4\n"
                 "  With checkpoint.dir set, saves there (every checkpoint.every steps and at the end);\n"
                 "  train.resume=true continues the run found there, bit-exactly. With checkpoints, SIGTERM,\n"
                 "  SIGUSR1 or SIGINT saves one after the current step and exits with status 75.\n"
                 "  Parallel (under mpirun / srun): parallel.tp=2 parallel.dp=2 (tp * dp = ranks),\n"
                 "  parallel.zero1=false keeps full optimizer state per rank; train.grad_accum=N.\n";
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> overrides(args.begin() + 1, args.end());
  for (const auto& o : overrides)
    LETHE_CHECK(o.find('=') != std::string::npos, "unexpected argument '", o, "' (overrides are key=value)");
  // Under mpirun an error on one rank must end every rank, not leave them in a collective.
  return run_or_abort_job([&] { return run_train(args[0], overrides, std::cout).stopped_by ? kExitStopped : 0; });
}

}  // namespace lethe::cli
