#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "engine/cli/commands.h"
#include "engine/core/log.h"
#include "engine/data/token_stream.h"
#include "engine/io/model_config_yaml.h"
#include "engine/model/llama.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/schedule.h"

namespace lethe::cli {
namespace {

struct TrainConfig {
  LlamaConfig model;
  std::string data_path, data_format = "bytes";
  int64_t steps = 100, batch_size = 8, seq_len = 64, log_every = 10, threads = 0;
  uint64_t seed = 1234;
  int64_t recompute_layers = 0;
  OptimConfig optim;
  LRSchedule schedule;
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
  c.data_path = d.path("path");
  c.data_format = d.get<std::string>("format", c.data_format);
  d.finish();

  if (root.has("train")) {
    const ConfigNode t = root.child("train");
    c.steps = t.get<int64_t>("steps", c.steps);
    c.batch_size = t.get<int64_t>("batch_size", c.batch_size);
    c.seq_len = t.get<int64_t>("seq_len", c.seq_len);
    c.seed = uint64_t(t.get<int64_t>("seed", int64_t(c.seed)));
    c.log_every = t.get<int64_t>("log_every", c.log_every);
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
    c.threads = t.get<int64_t>("threads", c.threads);
    t.finish();
    LETHE_CHECK(c.steps >= 1, t.where("steps"), ": must be >= 1");
    LETHE_CHECK(c.batch_size >= 1, t.where("batch_size"), ": must be >= 1");
    LETHE_CHECK(c.seq_len >= 1 && c.seq_len <= c.model.max_seq_len, t.where("seq_len"), ": must be in [1, ",
                c.model.max_seq_len, "] (the model's max_seq_len)");
    LETHE_CHECK(c.log_every >= 1, t.where("log_every"), ": must be >= 1");
    LETHE_CHECK(c.threads >= 0, t.where("threads"), ": must be >= 0 (0 = all cores)");
  }
  if (root.has("optimizer")) {
    const ConfigNode o = root.child("optimizer");
    c.optim.type = o.get<std::string>("type", c.optim.type);
    c.optim.beta1 = o.get<double>("beta1", c.optim.beta1);
    c.optim.beta2 = o.get<double>("beta2", c.optim.beta2);
    c.optim.eps = o.get<double>("eps", c.optim.eps);
    c.optim.weight_decay = o.get<double>("weight_decay", c.optim.weight_decay);
    c.optim.momentum = o.get<double>("momentum", c.optim.momentum);
    c.optim.grad_clip = o.get<double>("grad_clip", c.optim.grad_clip);
    c.schedule.type = o.get<std::string>("schedule", c.schedule.type);
    c.schedule.lr = o.get<double>("lr", c.schedule.lr);
    c.schedule.min_lr = o.get<double>("min_lr", c.schedule.min_lr);
    c.schedule.warmup_steps = o.get<int64_t>("warmup_steps", c.schedule.warmup_steps);
    o.finish();
    try {
      c.optim.validate();
      c.schedule.validate();
    } catch (const Error& e) {
      LETHE_FAIL(path, ": section 'optimizer': ", e.what());
    }
  }
  c.schedule.total_steps = c.steps;
  root.finish();
  return c;
}

}  // namespace

TrainSummary run_train(const std::string& config_path, const std::vector<std::string>& overrides, std::ostream& out) {
  const TrainConfig c = load_train_config(config_path, overrides);
  if (c.threads > 0) omp_set_num_threads(int(c.threads));
  const TokenStream stream = load_token_stream(c.data_path, c.data_format, c.model.vocab_size);
  const WindowSampler sampler(stream, c.seq_len, c.seed);

  LlamaModel model(c.model, DType::f32);
  model.init_weights(c.seed);
  model.set_recompute_layers(c.recompute_layers);
  Optimizer opt(model.params(), c.optim);

  char line[256];
  std::snprintf(line, sizeof line, "model %s: %.2fM params | data %zu tokens | batch %lld x %lld | %s, %d threads",
                c.model.name.c_str(), double(c.model.n_params()) / 1e6, stream.tokens.size(),
                (long long)c.batch_size, (long long)c.seq_len, c.optim.type.c_str(), omp_get_max_threads());
  out << line << std::endl;

  Tensor tokens = Tensor::empty({c.batch_size, c.seq_len}, DType::i32);
  Tensor targets = Tensor::empty({c.batch_size, c.seq_len}, DType::i32);
  TrainSummary summary;
  double timed_seconds = 0;
  int64_t timed_tokens = 0;
  const double flops_per_token = c.model.train_flops_per_token(c.seq_len);
  for (int64_t step = 0; step < c.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    sampler.batch(step, tokens, targets);
    model.grads().zero();
    const double loss = model.forward(tokens, targets);
    LETHE_CHECK(std::isfinite(loss), "loss is ", loss, " at step ", step, "; stopping before the update");
    model.backward();
    const double lr = c.schedule.at(step);
    const double gnorm = opt.step(model.grads(), lr);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    summary.losses.push_back(loss);
    const int64_t ntok = c.batch_size * c.seq_len;
    if (step > 0 || c.steps == 1) {  // the first step pays for allocation
      timed_seconds += dt;
      timed_tokens += ntok;
    }
    if (step % c.log_every == 0 || step == c.steps - 1) {
      std::snprintf(line, sizeof line, "step %5lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s",
                    (long long)step + 1, (long long)c.steps, loss, lr, gnorm, double(ntok) / dt);
      out << line << std::endl;
    }
  }
  summary.tokens_per_s = timed_seconds > 0 ? double(timed_tokens) / timed_seconds : 0;
  summary.mfu_flops = summary.tokens_per_s * flops_per_token;
  std::snprintf(line, sizeof line,
                "done: loss %.4f -> %.4f | %.0f tok/s | %.2f GFLOP/s model FLOPs (%.3g FLOP/token)",
                summary.losses.front(), summary.losses.back(), summary.tokens_per_s, summary.mfu_flops / 1e9,
                flops_per_token);
  out << line << std::endl;
  return summary;
}

int train_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << "usage: lethe train CONFIG.yaml [key=value ...]\n"
                 "  Trains (gradient descent) on a token file and prints step, loss, tokens/s.\n"
                 "  Overrides use dotted keys: train.steps=50 optimizer.lr=1e-3 model.n_layers=4\n";
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> overrides(args.begin() + 1, args.end());
  for (const auto& o : overrides)
    LETHE_CHECK(o.find('=') != std::string::npos, "unexpected argument '", o, "' (overrides are key=value)");
  run_train(args[0], overrides, std::cout);
  return 0;
}

}  // namespace lethe::cli
