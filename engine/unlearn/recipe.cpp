#include "engine/unlearn/recipe.h"

#include "engine/io/optim_config_yaml.h"
#include "engine/io/yaml_config.h"

namespace lethe {

int64_t Recipe::recompute_for(int64_t n_layers) const {
  if (recompute_layers == kRecomputeAll) return n_layers;
  LETHE_CHECK(recompute_layers <= n_layers, recompute_key, ": ", recompute_layers, " layers, the model has ", n_layers);
  return recompute_layers;
}

bool Recipe::uses_stream(const std::string& s) const {
  for (const auto& t : terms)
    if (t.stream == s) return true;
  return false;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  const ConfigNode root = ConfigNode::load_file(path, overrides);
  Recipe r;
  r.file = path;
  r.method = root.require<std::string>("method");
  r.model = root.path("model");
  if (root.has("oracle")) r.oracle = root.path("oracle");

  const ConfigNode d = root.child("data");
  r.forget = d.path("forget");
  r.holdout = d.path("holdout");
  if (d.has("retain")) r.retain = d.path("retain");
  if (d.has("general")) r.general = d.path("general");
  r.seq_len = d.get<int64_t>("seq_len", r.seq_len);
  r.min_targets = d.get<int64_t>("min_targets", r.min_targets);
  d.finish();
  LETHE_CHECK(r.seq_len >= 1, d.where("seq_len"), ": must be >= 1");
  LETHE_CHECK(r.min_targets >= 1 && r.min_targets <= r.seq_len, d.where("min_targets"), ": must be in [1, seq_len]");

  // terms: a mapping of name -> {type, stream, weight, ...}, so overrides can address them
  // (terms.retain.weight=0.5).
  const ConfigNode ts = root.child("terms");

  for (const std::string& key : ts.keys()) {
    const ConfigNode t = ts.child(key);
    TermSpec s;
    s.type = t.require<std::string>("type");
    s.stream = t.require<std::string>("stream");
    // Keys added with the later methods belong to one term type each: on another type they
    // would be silently ignored, so they are errors there.
    const std::pair<const char*, const char*> owned[] = {
        {"label_source", "random_labels"}, {"top_k", "random_labels"}, {"top_p", "random_labels"},
        {"alpha", "wga"}, {"gamma", "undial"}, {"flood", "flood"}, {"steering", "rmu_forget"}};
    for (const auto& [k, type] : owned)
      LETHE_CHECK(!t.has(k) || s.type == type, t.where(k), ": not a key of a ", s.type, " term (only ", type, ")");
    s.weight = t.get<double>("weight", s.weight);
    s.beta = t.get<double>("beta", s.beta);
    s.delta = t.get<double>("delta", s.delta);
    s.layer = t.get<int64_t>("layer", s.layer);
    s.steer = t.get<double>("steer", s.steer);
    s.steering = t.get<std::string>("steering", s.steering);
    s.label_source = t.get<std::string>("label_source", s.label_source);
    s.top_k = t.get<int64_t>("top_k", s.top_k);
    s.top_p = t.get<double>("top_p", s.top_p);
    s.alpha = t.get<double>("alpha", s.alpha);
    s.gamma = t.get<double>("gamma", s.gamma);
    s.flood = t.get<double>("flood", s.flood);
    s.seed = uint64_t(t.get<int64_t>("seed", 0));
    if (s.type == "random_labels" && s.label_source == "uniform")
      for (const char* k : {"top_k", "top_p"})
        LETHE_CHECK(!t.has(k), t.where(k), ": applies to label_source: reference only");
    if (s.type == "rmu_forget" && s.steering == "adaptive") {
      LETHE_CHECK(t.has("beta"), t.where("beta"), ": steering: adaptive needs beta (c = beta * mean activation norm)");
      LETHE_CHECK(!t.has("steer"), t.where("steer"), ": steering: adaptive computes c from beta; drop steer");
    }
    LETHE_CHECK(s.type != "flood" || t.has("flood"), t.where("flood"),
                ": a flood term needs its target NLL per token (nats)");
    t.finish();
    validate_term_spec(s, [&](const std::string& k) { return t.where(k); });
    if (s.weight != 0) r.terms.push_back(s);
  }
  ts.finish();
  LETHE_CHECK(!r.terms.empty(), root.where("terms"), ": no term with a non-zero weight");
  LETHE_CHECK(r.uses_stream("forget"), root.where("terms"), ": no term reads the forget stream");
  LETHE_CHECK(!r.uses_stream("retain") || !r.retain.empty(), d.where("retain"),
              ": a term reads the retain stream, but data.retain is not set");
  LETHE_CHECK(!r.uses_stream("general") || !r.general.empty(), d.where("general"),
              ": a term reads the general stream, but data.general is not set");

  r.device_key = root.where("train.device");
  if (root.has("train")) {
    const ConfigNode t = root.child("train");
    r.steps = t.get<int64_t>("steps", r.steps);
    r.batch_size = t.get<int64_t>("batch_size", r.batch_size);
    r.grad_accum = t.get<int64_t>("grad_accum", r.grad_accum);
    r.log_every = t.get<int64_t>("log_every", r.log_every);
    r.seed = uint64_t(t.get<int64_t>("seed", int64_t(r.seed)));
    r.resume = t.get<bool>("resume", r.resume);
    r.run_steps = t.get<int64_t>("run_steps", r.run_steps);
    if (t.has("device")) r.device = parse_device_choice(t.require<std::string>("device"), t.where("device"));
    if (t.has("precision")) r.precision = parse_precision(t.require<std::string>("precision"), t.where("precision"));
    // recompute: true/false for all layers, or a count of layers (the first ones).
    r.recompute_key = t.where("recompute");
    if (t.has("recompute")) {
      try {
        r.recompute_layers = t.require<bool>("recompute") ? Recipe::kRecomputeAll : 0;
      } catch (const Error&) {
        r.recompute_layers = t.require<int64_t>("recompute");
        LETHE_CHECK(r.recompute_layers >= 0, r.recompute_key, ": must be true, false or a layer count >= 0, got ",
                    r.recompute_layers);
      }
    }
    if (t.has("trainable")) {
      const std::string v = t.require<std::string>("trainable");
      if (v != "all") {
        size_t a = 0;
        while (a <= v.size()) {  // comma-separated name fragments
          const size_t b = v.find(',', a);
          const std::string part = v.substr(a, b == std::string::npos ? std::string::npos : b - a);
          if (!part.empty()) r.trainable.push_back(part);
          if (b == std::string::npos) break;
          a = b + 1;
        }
      }
    }
    t.finish();
    LETHE_CHECK(r.steps >= 0, t.where("steps"), ": must be >= 0");
    LETHE_CHECK(r.batch_size >= 1, t.where("batch_size"), ": must be >= 1");
    LETHE_CHECK(r.grad_accum >= 1, t.where("grad_accum"), ": must be >= 1");
    LETHE_CHECK(r.log_every >= 1, t.where("log_every"), ": must be >= 1");
    LETHE_CHECK(r.run_steps >= 0, t.where("run_steps"), ": must be >= 0 (0 = run to the end)");
  }
  if (root.has("optimizer")) read_optimizer_section(root.child("optimizer"), r.steps, r.optim, r.schedule);
  r.schedule.total_steps = std::max<int64_t>(1, r.steps);
  if (root.has("eval")) {
    const ConfigNode e = root.child("eval");
    r.eval_every = e.get<int64_t>("every", r.eval_every);
    r.eval_max_sequences = e.get<int64_t>("max_sequences", r.eval_max_sequences);
    r.eval_final_max_sequences = e.get<int64_t>("final_max_sequences", r.eval_final_max_sequences);
    r.eval_selection_split = e.get<bool>("selection_split", r.eval_selection_split);
    r.mia_max_docs = e.get<int64_t>("mia_max_docs", r.mia_max_docs);
    r.mia_max_tokens = e.get<int64_t>("mia_max_tokens", r.mia_max_tokens);
    r.verbatim_prefix = e.get<int64_t>("verbatim_prefix", r.verbatim_prefix);
    r.verbatim_continuation = e.get<int64_t>("verbatim_continuation", r.verbatim_continuation);
    r.verbatim_max_docs = e.get<int64_t>("verbatim_max_docs", r.verbatim_max_docs);
    if (e.has("mc_task")) r.mc_task = e.path("mc_task");
    if (e.has("cache")) r.eval_cache = e.path("cache");
    if (e.has("mc_tasks")) {
      LETHE_CHECK(e.is_map("mc_tasks"), e.where("mc_tasks"), ": must be a mapping of task name to JSONL file");
      const ConfigNode t = e.child("mc_tasks");
      for (const std::string& name : t.keys()) r.mc_tasks.emplace_back(name, t.path(name));
      t.finish();
    }
    if (e.has("canaries")) {
      LETHE_CHECK(e.is_map("canaries"), e.where("canaries"), ": must be a mapping of set name to JSONL file");
      const ConfigNode t = e.child("canaries");
      for (const std::string& name : t.keys()) r.canaries.emplace_back(name, t.path(name));
      t.finish();
    }
    e.finish();
    LETHE_CHECK(r.eval_every >= 0, e.where("every"), ": must be >= 0");
    LETHE_CHECK(r.eval_max_sequences >= 0, e.where("max_sequences"), ": must be >= 0 (0 = all)");
    LETHE_CHECK(r.eval_final_max_sequences >= 0, e.where("final_max_sequences"), ": must be >= 0 (0 = all)");
    LETHE_CHECK(r.mia_max_docs >= 0, e.where("mia_max_docs"), ": must be >= 0 (0 = all)");
    LETHE_CHECK(r.mia_max_tokens >= 0, e.where("mia_max_tokens"), ": must be >= 0 (0 = all)");
    LETHE_CHECK(r.verbatim_prefix >= 0 && r.verbatim_continuation >= 0 &&
                    (r.verbatim_prefix == 0) == (r.verbatim_continuation == 0),
                e.where("verbatim_prefix"), ": verbatim_prefix and verbatim_continuation must both be 0 or both > 0");
    LETHE_CHECK(r.verbatim_max_docs >= 1, e.where("verbatim_max_docs"), ": must be >= 1");
  }
  if (root.has("stop")) {
    const ConfigNode s = root.child("stop");
    r.stop_forget_reaches_holdout = s.get<bool>("forget_reaches_holdout", r.stop_forget_reaches_holdout);
    r.stop_mia_band = s.get<double>("mia_auc_band", r.stop_mia_band);
    r.stop_retain_ratio = s.get<double>("retain_ppl_ratio", r.stop_retain_ratio);
    s.finish();
    LETHE_CHECK(r.stop_mia_band >= 0 && r.stop_mia_band < 0.5, s.where("mia_auc_band"), ": must be in [0, 0.5)");
    LETHE_CHECK(r.stop_retain_ratio == 0 || r.stop_retain_ratio > 1, s.where("retain_ppl_ratio"),
                ": must be 0 (off) or > 1");
  }
  if (root.has("parallel")) {
    const ConfigNode p = root.child("parallel");
    r.parallel.tp = int(p.get<int64_t>("tp", r.parallel.tp));
    r.parallel.dp = int(p.get<int64_t>("dp", r.parallel.dp));
    r.parallel.zero1 = p.get<bool>("zero1", r.parallel.zero1);
    r.parallel.bucket_elements = p.get<int64_t>("bucket_elements", r.parallel.bucket_elements);
    p.finish();
    LETHE_CHECK(r.parallel.tp >= 1, p.where("tp"), ": must be >= 1");
    LETHE_CHECK(r.parallel.dp >= 1, p.where("dp"), ": must be >= 1");
    LETHE_CHECK(r.parallel.bucket_elements >= 1, p.where("bucket_elements"), ": must be >= 1");
  }
  // Every micro-batch is a batch of batch_size sequences, split over the dp ranks.
  LETHE_CHECK(r.batch_size % r.parallel.dp == 0, path, ": train.batch_size (", r.batch_size,
              ") must be a multiple of parallel.dp (", r.parallel.dp, ")");
  const ConfigNode o = root.child("output");
  r.out_dir = o.path("dir");
  r.export_hf = o.get<bool>("export_hf", r.export_hf);
  r.checkpoint_every = o.get<int64_t>("checkpoint_every", r.checkpoint_every);
  r.keep_last = o.get<int64_t>("keep_last", r.keep_last);
  o.finish();
  LETHE_CHECK(r.checkpoint_every >= 0, o.where("checkpoint_every"), ": must be >= 0 (0 = no checkpoints)");
  LETHE_CHECK(r.keep_last >= 1, o.where("keep_last"), ": must be >= 1");
  root.finish();
  return r;
}

}  // namespace lethe
