#include "engine/unlearn/unlearner.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "engine/data/sequence_sampler.h"
#include "engine/data/tokenizer_file.h"
#include "engine/eval/generate.h"
#include "engine/eval/mia.h"
#include "engine/eval/exposure.h"
#include "engine/eval/multiple_choice.h"
#include "engine/eval/nll.h"
#include "engine/io/checkpoint.h"
#include "engine/io/hf_model.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/model_loader.h"
#include "engine/model/tp_layout.h"
#include "engine/optim/sharded_optimizer.h"
#include "engine/parallel/stop_request.h"
#include "engine/parallel/grid.h"
#include "engine/run/step_loop.h"
#include "engine/core/peak_flops.h"
#include "engine/io/sha256.h"
#include "engine/unlearn/eval_cache.h"
#include "engine/unlearn/progress.h"
#include "engine/unlearn/report.h"
#include "engine/unlearn/run_state.h"
#include "engine/unlearn/stop_rules.h"
#include "kernels/cross_entropy.h"
#include "kernels/cpu/blas_kernel.h"

namespace lethe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Stream {
  std::string name, path;
  std::unique_ptr<TokenDataset> ds;
  std::unique_ptr<SequenceSampler> sampler;
};

// The documents an evaluation reads, per split.
using EvalSets = std::map<std::string, const TokenDataset*>;

EvalPoint evaluate(LlamaModel& m, const EvalSets& splits, int64_t T, int64_t batch, int64_t max_seq, int64_t step) {
  const ForwardOnlyScope scoring(m);  // no backward follows: keep one layer's activations
  EvalPoint e;
  e.step = step;
  // The same pass yields each sequence's mean NLL: the LOSS membership score (higher =
  // member is its negative).
  std::map<std::string, std::vector<double>> scores;
  for (const auto& [name, ds] : splits) {
    const NllResult r = evaluate_nll(m, *ds, T, batch, max_seq);
    e.splits[name] = {r.mean_nll(), r.perplexity(), r.accuracy(), r.tokens};
    for (double x : r.sequence_nll) scores[name].push_back(-x);
  }
  e.mia_auc = roc_auc(scores.at("forget"), scores.at("holdout"));
  return e;
}

// A lethe checkpoint's vocabulary (from convert gguf-to-lethe) travels to the unlearned
// checkpoints, so they decode on their own.
std::string source_tokenizer(const std::string& model) {
  if (!fs::exists(fs::path(model) / "manifest.json")) return "";
  const Checkpoint c = Checkpoint::open(model);
  return c.has_file("tokenizer.json") ? c.read_file("tokenizer.json") : "";
}

// Every rank calls it: each writes its shard of the weights, rank 0 the manifest.
void save_model(const std::string& dir, const std::string& name, LlamaModel& m, const Recipe& r, int64_t step,
                const json& metrics, const std::string& tokenizer) {
  save_checkpoint_all_ranks(dir, name, m, nullptr, /*update_latest=*/false, [&](CheckpointWriter& w) {
    if (!tokenizer.empty()) w.add_file("tokenizer.json", tokenizer);
    json& man = w.manifest();
    man["kind"] = "model";
    man["step"] = step;
    man["model"] = llama_config_to_json(m.config());
    man["unlearn"] = {{"method", r.method}, {"recipe", fs::path(r.file).filename().string()}};
    man["metrics"] = metrics;
    man["parallel"] = {{"tp", m.grid().tp()}, {"dp", m.grid().dp()}};
    man["precision"] = precision_name(m.precision());
    man["lethe_version"] = LETHE_VERSION;
  });
}

void check_tp(const Recipe& r, const LlamaConfig& c, const std::string& what) {
  try {
    TpLayout::make(c, r.parallel.tp, 0);
  } catch (const Error& e) {
    LETHE_FAIL(r.file, ": parallel.tp: ", what, ": ", e.what());
  }
}

// Model FLOPs per token of a term's batch (DESIGN.md's MFU): forward + backward of the
// layers it runs, plus a forward of the frozen reference when it reads one per batch.
// RMU runs layers 0..l only and no output head.
double term_flops_per_token(const TermSpec& t, const LlamaConfig& c, int64_t T) {
  const double full = c.train_flops_per_token(T);
  if (t.type == "rmu_forget" || t.type == "rmu_retain") {
    const double head = 6.0 * double(c.dim) * double(c.vocab_size);
    const double per_layer = (full - head) / double(c.n_layers);
    const double layers = double(t.layer + 1) * per_layer;
    return t.type == "rmu_retain" ? layers * (4.0 / 3.0) : layers;
  }
  // A frozen-reference forward (a third of forward + backward) for the terms that read
  // its logits every step.
  return term_reads_reference(t) ? full * (4.0 / 3.0) : full;
}

using Decode = std::function<std::string(const std::vector<int32_t>&)>;

// The text the zlib attack compresses: each scored document, or the part of it that was
// scored when documents are truncated. Empty (no zlib attack) without a decoder.
std::vector<std::string> doc_texts(const TokenDataset& ds, const std::vector<DocTokenStats>& stats,
                                   const Decode& decode, bool truncated) {
  std::vector<std::string> out;
  if (!decode) return out;
  for (const auto& st : stats) {
    const int64_t b = ds.offsets[size_t(st.doc)], len = ds.offsets[size_t(st.doc) + 1] - b;
    const int64_t n = truncated ? std::min(len, int64_t(st.logp.size()) + 1) : len;
    out.push_back(decode(std::vector<int32_t>(ds.tokens.begin() + b, ds.tokens.begin() + b + n)));
  }
  return out;
}

// The documents a set holds, in order, as one digest (eval.cache keys).
std::string docs_digest(const TokenDataset& ds) {
  Sha256Stream h;
  for (const auto& d : ds.doc_sha256) h.update(d.data(), d.size());
  return to_hex(h.final());
}

// Per-document statistics of forget and holdout documents, as the final MIA scores them.
struct MiaDocStats {
  std::vector<DocTokenStats> forget, holdout;
};
MiaDocStats mia_doc_stats(LlamaModel& m, const TokenDataset& forget, const TokenDataset& holdout, const Recipe& r) {
  const int64_t T = r.seq_len;
  const int64_t chunks = r.mia_max_tokens > 0 ? (r.mia_max_tokens + T - 1) / T : 0;
  return {collect_doc_stats(m, forget, T, 8, r.mia_max_docs, nullptr, chunks),
          collect_doc_stats(m, holdout, T, 8, r.mia_max_docs, nullptr, chunks)};
}

// Full MIA suite (every attack) on forget vs holdout documents: each attack's score per
// document. No reference-model attack: the only reference at hand is the original model,
// which saw the forget set, so it would detect "was unlearned", not "was trained on" (the
// oracle scored AUC 0.003 on it).
MiaSuite full_mia(LlamaModel& m, const EvalSets& sets, const Recipe& r, const Decode& decode) {
  const ForwardOnlyScope scoring(m);  // no backward follows: keep one layer's activations
  const bool truncated = r.mia_max_tokens > 0;
  const TokenDataset &forget = *sets.at("forget"), &holdout = *sets.at("holdout");
  const MiaDocStats s = mia_doc_stats(m, forget, holdout, r);
  return {mia_scores(s.forget, doc_texts(forget, s.forget, decode, truncated)),
          mia_scores(s.holdout, doc_texts(holdout, s.holdout, decode, truncated))};
}

std::map<std::string, double> aucs(const MiaSuite& s) { return mia_report(s.members, s.nonmembers).auc; }

ExtraMetrics extra_metrics(LlamaModel& m, const Recipe& r, const TokenDataset& forget, const Decode& decode) {
  const ForwardOnlyScope scoring(m);  // no backward follows: keep one layer's activations
  ExtraMetrics x;
  if (r.verbatim_prefix > 0) {
    const VerbatimResult v = verbatim_memorisation(m, forget, r.verbatim_prefix, r.verbatim_continuation,
                                                   r.verbatim_max_docs, decode, 4);
    x.verbatim = true;
    x.rouge_l_f1 = v.rouge_l_f1_mean;
    x.rouge_l_recall = v.rouge_l_recall_mean;
    x.exact_match = v.exact_match_rate;
    x.verbatim_docs = v.docs;
  }
  if (!r.mc_task.empty()) {
    const McResult mc = multiple_choice_accuracy(m, r.mc_task, bytes_encode);
    x.mc = true;
    x.mc_acc = mc.acc;
    x.mc_acc_norm = mc.acc_norm;
    x.mc_items = mc.items;
    x.mc_truth_ratios = mc.truth_ratios;
  }
  for (const auto& [name, path] : r.mc_tasks) {
    const McResult mc = multiple_choice_accuracy(m, path, bytes_encode);
    x.mc_tasks[name] = {mc.items, mc.acc, mc.acc_norm, mc.truth_ratios};
  }
  for (const auto& [name, path] : r.canaries) {
    // Seeded by the recipe and the set, so before, after and the oracle sample alike.
    const ExposureSetResult e = canary_set_exposure(m, path, bytes_encode, r.seed * 1000003 + std::hash<std::string>{}(name));
    x.canaries[name] = {e.mean, e.log2_space_max, e.exact, e.exposures};
  }
  return x;
}

}  // namespace

UnlearnResult run_unlearn(const Recipe& r, std::ostream& out_all, bool progress_bar) {
  // Every rank runs the whole recipe (the same batches, evaluations and decisions); only
  // rank 0 prints and writes metrics and reports.
  // The device is settled before anything is allocated (a refused device writes nothing).
  const RunDevice dev = resolve_run_device(r.device, r.precision, r.device_key);
  const Precision prec = dev.precision;
  const std::shared_ptr<ProcessGrid> grid = ProcessGrid::create(r.parallel, dev.device);
  const int64_t eval_rows = eval_batch(r);
  const bool lead = grid->rank() == 0;
  UnlearnResult res;
  res.lead = lead;
  std::ostream null_out(nullptr);
  std::ostream& out = lead ? out_all : null_out;
  std::error_code ec;
  const bool fresh_dir = !fs::exists(r.out_dir, ec) || fs::is_empty(r.out_dir, ec);
  const bool has_run = !latest_checkpoint(run_checkpoint_dir(r)).empty();
  LETHE_CHECK(fresh_dir || (r.resume && has_run), r.out_dir, ": output directory is not empty",
              has_run ? "; it holds a resumable run: set train.resume=true to continue it, or choose a new output.dir"
                      : "; choose a new output.dir",
              " (nothing was overwritten)");
  grid->world().barrier();  // every rank has looked before rank 0 writes anything
  // Opened, not read: each model of the run (trained, reference, original) streams its
  // weights from it, one tensor at a time.
  const ModelSource source = ModelSource::open(r.model);
  const LlamaConfig& cfg = source.config();
  const std::string tokenizer = source_tokenizer(r.model);
  LETHE_CHECK(r.seq_len <= cfg.max_seq_len, r.file, ": data.seq_len ", r.seq_len, " exceeds the model's max_seq_len ",
              cfg.max_seq_len);
  check_tp(r, cfg, r.model);
  LlamaModel model(cfg, prec, grid, dev.device);
  model.set_recompute_layers(r.recompute_for(cfg.n_layers));
  // Before the load, so that under bf16 the fp32 master starts from the stored weights, not
  // their bf16 rounding (load_weights), on a device as in the CPU emulation.
  RunOptimizer opt(model.params(), model.grads(), r.optim, *grid, prec);
  const std::string model_sha = load_weights(model, source, &opt);

  // Streams. Every dataset must come from the model's tokenizer family: same vocabulary
  // bound and the same tokenizer as the forget set.
  std::map<std::string, Stream> streams;
  auto open = [&](const std::string& name, const std::string& path, bool train) {
    if (path.empty()) return;
    Stream& s = streams[name];
    s.name = name;
    s.path = path;
    s.ds = std::make_unique<TokenDataset>(load_token_dataset(path, cfg.vocab_size));
    LETHE_CHECK(s.ds->n_docs() > 0, path, ": the ", name, " set is empty");
    if (train) {
      SamplerConfig sc;
      sc.seq_len = r.seq_len;
      sc.min_targets = r.min_targets;
      sc.seed = r.seed + std::hash<std::string>{}(name) % 1000003;
      s.sampler = std::make_unique<SequenceSampler>(*s.ds, sc);
    }
  };
  open("forget", r.forget, true);
  open("holdout", r.holdout, false);
  open("retain", r.retain, r.uses_stream("retain"));
  open("general", r.general, r.uses_stream("general"));
  for (const auto& [name, s] : streams)
    LETHE_CHECK(s.ds->tokenizer == streams.at("forget").ds->tokenizer, s.path, ": tokenizer '", s.ds->tokenizer,
                "' differs from the forget set's '", streams.at("forget").ds->tokenizer,
                "'; every split must be tokenised like the model's training data");
  // Text-level metrics (zlib attack, verbatim ROUGE-L) decode with the data's tokenizer:
  // bytes, or the model's vocabulary. Multiple choice must also encode, which only the
  // byte tokenizer does here.
  const bool byte_level = streams.at("forget").ds->tokenizer == "bytes";
  Decode decode;
  if (byte_level) {
    decode = bytes_decode;
  } else if (std::shared_ptr<Detokenizer> d = find_detokenizer(r.model)) {
    decode = [d](const std::vector<int32_t>& ids) { return d->decode(ids); };
  }
  LETHE_CHECK(r.verbatim_prefix == 0 || decode, r.file, ": eval.verbatim_* needs to decode '",
              streams.at("forget").ds->tokenizer, "' ids, and ", r.model, " holds no tokenizer.json");
  LETHE_CHECK((r.mc_task.empty() && r.mc_tasks.empty()) || byte_level, r.file,
              ": eval.mc_task(s) need a byte-level model in this version (the forget set uses '",
              streams.at("forget").ds->tokenizer, "')");
  LETHE_CHECK(r.canaries.empty() || byte_level, r.file,
              ": eval.canaries need a byte-level model in this version (the forget set uses '",
              streams.at("forget").ds->tokenizer, "')");
  for (const auto& [name, path] : r.canaries) load_canaries(path);
  // The task files are read now, not after the run: a missing or malformed one must not
  // cost the steps before the final evaluation.
  if (!r.mc_task.empty()) load_mc_task(r.mc_task);
  for (const auto& [name, path] : r.mc_tasks) load_mc_task(path);
  if (!decode) out << "no tokenizer.json with " << r.model << ": the zlib attack is left out" << std::endl;
  // Selection on one half of the forget and holdout documents, reporting on the other: a
  // stop rule or best checkpoint chosen on the documents the report then scores biases the
  // reported numbers towards the stopping point. Training still reads the whole forget set
  // (every document is to be forgotten); retain and general are not split.
  std::map<std::string, TokenDataset> halves;  // "<split>/selection", "<split>/report"
  EvalSets select_sets, report_sets;
  for (const auto& [name, s] : streams) select_sets[name] = report_sets[name] = s.ds.get();
  if (r.eval_selection_split) {
    for (const std::string name : {"forget", "holdout"}) {
      const TokenDataset& ds = *streams.at(name).ds;
      LETHE_CHECK(ds.n_docs() >= 2, r.file, ": eval.selection_split: the ", name, " set ", ds.path, " holds ",
                  ds.n_docs(), " document; selecting on one half of its documents and reporting on the other needs "
                  "at least 2 (eval.selection_split: false selects and reports on the same documents)");
      const DocHalves h = split_documents_by_hash(ds);
      select_sets[name] = &(halves[name + "/selection"] = subset_token_dataset(ds, h.selection));
      report_sets[name] = &(halves[name + "/report"] = subset_token_dataset(ds, h.report));
    }
  }

  // The frozen original, kept only when a term reads it, and only up to the last layer
  // the terms read: RMU's retain term reads the hidden state at its layer (at Llama-2-7B
  // and layer 7 that leaves out 24 of 32 layers, 9.0 GiB of bf16 weights); a term that
  // reads logits needs every layer.
  std::unique_ptr<LlamaModel> reference;
  int64_t ref_layers = 0;
  for (const auto& t : r.terms)
    if (term_reads_reference(t))
      ref_layers = std::max(ref_layers, t.type == "rmu_retain" ? t.layer + 1 : cfg.n_layers);
  if (ref_layers > 0) {
    LlamaConfig first = cfg;
    first.n_layers = std::min(ref_layers, cfg.n_layers);  // a layer beyond is refused by the term
    reference = std::make_unique<LlamaModel>(first, prec, grid, dev.device);
    reference->set_forward_only(true);  // frozen: never a backward
    if (first.n_layers == cfg.n_layers) load_weights(*reference, source);
    else load_first_layers(*reference, source);
  }
  std::vector<std::unique_ptr<Term>> terms;
  for (const auto& spec : r.terms) {
    // Every term that reads the frozen original shares one copy of it.
    terms.push_back(make_term(spec, term_reads_reference(spec) ? reference.get() : &model));
    terms.back()->prepare(model, *streams.at(spec.stream).sampler, r.batch_size);  // model is still the original
  }

  if (!r.trainable.empty()) {
    std::vector<bool> mask(model.params().size(), false);
    int64_t n = 0;
    for (size_t i = 0; i < mask.size(); ++i)
      for (const auto& frag : r.trainable)
        if (model.params().spec(i).name.find(frag) != std::string::npos) mask[i] = true;
    for (bool b : mask) n += b;
    LETHE_CHECK(n > 0, r.file, ": train.trainable matches no parameter");
    opt.set_trainable(mask);
  }

  std::map<std::string, std::string> data_sha;
  for (const auto& [name, s] : streams) data_sha[name] = to_hex(sha256_file(s.path));
  const json fingerprint = run_fingerprint(r, model_sha, data_sha);

  // eval.cache: the original's and the oracle's final evaluations, shared by the runs
  // against the same pair. The evaluations are collective, so every rank takes the same
  // branch: a model counts as cached only when every rank found its entry.
  const std::string exe_sha = r.eval_cache.empty() ? "" : executable_sha256();
  std::map<std::string, std::string> report_docs, select_docs;
  for (const auto& [name, ds] : report_sets) report_docs[name] = docs_digest(*ds);
  for (const auto& [name, ds] : select_sets) select_docs[name] = docs_digest(*ds);
  std::string tokenizer_id = streams.at("forget").ds->tokenizer;
  if (!byte_level) {
    const fs::path tj = fs::path(r.model) / "tokenizer.json";
    if (fs::exists(tj, ec)) tokenizer_id += " " + to_hex(sha256_file(tj.string()));
    else if (!tokenizer.empty()) tokenizer_id += " " + to_hex(sha256(tokenizer.data(), tokenizer.size()));
  }
  auto cache_key = [&](const std::string& role, const std::string& sha) {
    return fixed_eval_key(r, role, sha, tokenizer_id, data_sha, report_docs, select_docs, prec, dev.device, exe_sha);
  };
  auto cache_lookup = [&](const json& key, const std::string& what) -> std::optional<FixedModelEval> {
    if (r.eval_cache.empty()) return std::nullopt;
    std::string why = "the executable cannot be read to key it";
    std::optional<FixedModelEval> e;
    if (!exe_sha.empty()) e = load_fixed_eval(r.eval_cache, key, &why);
    if (grid->world().all_reduce(int64_t(!e), ReduceOp::max) != 0) {
      if (e) why = "another rank has no entry";
      out << "eval.cache: the " << what << " is scored (" << why << ")" << std::endl;
      return std::nullopt;
    }
    out << "eval.cache: the " << what << "'s final evaluation from " << fixed_eval_path(r.eval_cache, key) << std::endl;
    return e;
  };
  auto cache_store = [&](const json& key, const FixedModelEval& e, const std::string& what) {
    if (r.eval_cache.empty() || exe_sha.empty() || !lead) return;
    std::string why;
    if (!save_fixed_eval(r.eval_cache, key, e, &why))
      out << "eval.cache: the " << what << "'s evaluation is not cached: " << why << std::endl;
  };
  const json original_key = r.eval_cache.empty() ? json() : cache_key("original", model_sha);
  RunState st;
  const bool resumed = r.resume && load_run_state(r, fingerprint, model, opt, st);
  if (resumed)
    for (auto& [name, s] : streams)
      if (s.sampler) {
        LETHE_CHECK(st.cursors.count(name), run_checkpoint_dir(r), ": run state has no cursor for the ", name, " stream");
        s.sampler->set_cursor(st.cursors.at(name));
      }

  fs::create_directories(r.out_dir, ec);
  LETHE_CHECK(!ec, r.out_dir, ": cannot create: ", ec.message());
  const fs::path metrics_path = fs::path(r.out_dir) / "metrics.jsonl";
  // Only rank 0 opens the file; the other ranks' writes go to a closed log. A resumed run
  // first cuts the file back to the lines its checkpoint covers.
  MetricsLog metrics;
  int64_t metrics_kept = -1;
  if (lead) {
    if (resumed) metrics_kept = truncate_metrics(metrics_path.string(), st.step);
    metrics.open(metrics_path.string(), resumed);
  }
  res.selection_split = r.eval_selection_split;
  for (const auto& [name, ds] : select_sets) res.in_run_docs[name] = ds->n_docs();
  for (const auto& [name, ds] : report_sets) res.final_docs[name] = ds->n_docs();
  ProgressBar bar(out, r.steps, progress_bar && lead);
  PeakFlops peak = cpu_peak_flops(omp_get_max_threads());
  peak.flops *= double(grid->world_size());  // every rank's share of the hardware

  out << blas_kernel_line() << std::endl;  // the CPU GEMM kernel decides the speed of everything below
  out << dev.line << std::endl;
  out << "unlearn " << r.method << ": model " << cfg.name << " (" << fmt("%.2fM", double(cfg.n_params()) / 1e6)
      << " params), " << streams.at("forget").ds->n_docs() << " forget documents, " << terms.size() << " terms, "
      << r.steps << " steps, " << omp_get_max_threads() << " threads" << std::endl;
  if (r.eval_selection_split)
    for (const char* name : {"forget", "holdout"})
      out << name << ": in-run evaluations (stop rules, best checkpoint) read " << res.in_run_docs.at(name) << " of "
          << streams.at(name).ds->n_docs() << " documents, the final evaluation the other " << res.final_docs.at(name)
          << " (eval.selection_split)" << std::endl;
  if (peak.flops > 0) out << "MFU against a peak of " << fmt("%.1f", peak.flops / 1e9) << " GFLOP/s (" << peak.source << ")" << std::endl;
  if (grid->parallel())
    out << "parallel: tp=" << grid->tp() << " x dp=" << grid->dp() << " over " << grid->world_size() << " ranks ("
        << grid->backend() << ")" << (grid->zero1() ? ", ZeRO-1" : "") << std::endl;
  if (resumed) out << "resumed from " << latest_checkpoint(run_checkpoint_dir(r)) << " at step " << st.step << std::endl;
  if (resumed && lead && st.metrics_lines >= 0 && metrics_kept != st.metrics_lines)
    out << "warning: " << metrics_path.string() << " holds " << metrics_kept << " lines up to step " << st.step
        << " where the checkpoint covers " << st.metrics_lines << "; the file does not match the run's record"
        << std::endl;
  auto log_eval = [&](const EvalPoint& e, const char* label) {
    std::string line = std::string(label) + " step " + std::to_string(e.step) + ":";
    for (const char* s : {"forget", "retain", "holdout", "general"})
      if (e.splits.count(s)) line += std::string(" ") + s + " nll " + fmt("%.4f", e.splits.at(s).nll);
    line += " | MIA AUC " + fmt("%.3f", e.mia_auc);
    bar.println(line);
    metrics.write(json{{"eval", eval_to_json(e)}}.dump());
  };
  const std::optional<FixedModelEval> original_cached = cache_lookup(original_key, "original model");
  if (resumed) {
    res.evals = st.evals;
    res.extra["before"] = st.before;
  } else {
    res.evals.push_back(evaluate(model, select_sets, r.seq_len, eval_rows, r.eval_max_sequences, 0));
    log_eval(res.evals.back(), "before");
    res.extra["before"] =
        original_cached ? original_cached->extra : extra_metrics(model, r, *streams.at("forget").ds, decode);
  }
  const double retain0 = res.evals[0].splits.count("retain") ? res.evals[0].splits.at("retain").ppl : 0;

  // Best checkpoint rule: among evaluations whose retain perplexity stays within the stop
  // ratio (or 1.1x when unset), the one whose forget NLL is closest to the holdout NLL:
  // the observable point nearest to "as if never trained on the forget set".
  const double keep_ratio = r.stop_retain_ratio > 0 ? r.stop_retain_ratio : 1.1;
  double best_gap = resumed ? st.best_gap : INFINITY;
  if (resumed) res.best_dir = st.best_dir;
  auto consider_best = [&](const EvalPoint& e) {
    if (retain0 > 0 && e.splits.at("retain").ppl > keep_ratio * retain0) return;
    const double gap = std::abs(e.splits.at("forget").nll - e.splits.at("holdout").nll);
    if (gap < best_gap) {
      best_gap = gap;
      if (lead) fs::remove_all(fs::path(r.out_dir) / "best", ec);  // the others wait in save_model's first collective
      save_model(r.out_dir, "best", model, r, e.step, eval_to_json(e), tokenizer);
      res.best_dir = (fs::path(r.out_dir) / "best").string();
    }
  };
  if (!resumed) consider_best(res.evals[0]);

  // Every rank draws the global batch from each stream (the cursors stay those of one
  // process) and keeps its dp rank's rows.
  const int64_t rows = r.batch_size / grid->dp(), row0 = grid->dp_rank() * rows;
  std::map<std::string, UnlearnBatch> global, batches;
  for (const auto& [name, s] : streams)
    if (s.sampler) {
      global[name].tokens = Tensor::empty({r.batch_size, r.seq_len}, DType::i32);
      global[name].targets = Tensor::empty({r.batch_size, r.seq_len}, DType::i32);
    }
  res.stop_reason = "max steps";
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t tokens_per_step = int64_t(global.size()) * r.batch_size * r.seq_len * r.grad_accum;
  double flops_per_step = 0;
  for (const auto& t : r.terms)
    flops_per_step += term_flops_per_token(t, cfg, r.seq_len) * double(r.batch_size * r.seq_len * r.grad_accum);
  const int64_t first = st.step;
  const int64_t stop_at = r.run_steps > 0 ? std::min(r.steps, first + r.run_steps) : r.steps;
  res.steps_run = first;
  auto checkpoint = [&](int64_t step) {
    st.step = step;
    st.cursors.clear();
    for (const auto& [name, s] : streams)
      if (s.sampler) st.cursors[name] = s.sampler->cursor();
    st.evals = res.evals;
    st.before = res.extra.at("before");
    st.best_gap = best_gap;
    st.best_dir = res.best_dir;
    // Every metrics line up to this step is on disk before the checkpoint that covers it
    // is committed: a resume cuts the file back to these lines, never to fewer.
    metrics.sync();
    st.metrics_lines = metrics.lines();
    save_run_state(r, model, opt, st, fingerprint);
  };
  // A stop signal (a time limit, a preemption, Ctrl-C) pauses the run as train.run_steps
  // does: a run checkpoint after the current step, then the exit.
  install_stop_handlers();
  StepHooks hooks;
  std::map<std::string, double> term_loss;
  hooks.accumulate = [&](int64_t step) {
    term_loss.clear();
    double total = 0;
    for (int64_t a = 0; a < r.grad_accum; ++a) {
      for (auto& [name, g] : global) {
        streams.at(name).sampler->next(g.tokens, g.targets, nullptr, &g.seq_ids);
        UnlearnBatch& b = batches[name];
        if (grid->dp() == 1) {
          b = g;
        } else {
          b.tokens = g.tokens.slice_rows(row0, row0 + rows).clone();
          b.targets = g.targets.slice_rows(row0, row0 + rows).clone();
          b.seq_ids.assign(g.seq_ids.begin() + row0, g.seq_ids.begin() + row0 + rows);
          b.row0 = row0;
          b.global_rows = r.batch_size;
        }
        b.step = step * r.grad_accum + a;
      }
      for (size_t ti = 0; ti < terms.size(); ++ti) {
        const auto& t = terms[ti];
        // The dp reduction overlaps the step's last backward only: earlier ones still add
        // into the gradient buffers.
        if (opt.par && a + 1 == r.grad_accum && ti + 1 == terms.size())
          model.set_grad_ready_hook([&](size_t i) { opt.par->grad_ready(i); });
        if (model.numerics().enabled())
          model.numerics().set_context("step " + std::to_string(step + 1) + ", term " + t->spec().name());
        const double L = t->accumulate(model, batches.at(t->spec().stream), t->spec().weight / double(r.grad_accum));
        model.set_grad_ready_hook(nullptr);
        LETHE_CHECK(std::isfinite(L), "term ", t->spec().name(), " has loss ", L, " at step ", step + 1,
                    "; stopping before the update");
        term_loss[t->spec().name()] += L / double(r.grad_accum);
        total += t->spec().weight * L / double(r.grad_accum);
      }
    }
    return total;
  };
  hooks.after_update = [&](const StepInfo& s) {
    const int64_t step = s.step - 1;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const double done = double(step + 1 - first);
    const double tps = double(tokens_per_step) * done / elapsed;
    const double mfu = peak.flops > 0 ? flops_per_step * done / elapsed / peak.flops : 0;
    const double eta = elapsed / done * double(r.steps - step - 1);
    json jl = {{"step", step + 1}, {"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm}, {"tokens_per_s", tps}};
    if (peak.flops > 0) jl["mfu"] = mfu;
    for (const auto& [n, v] : term_loss) jl["terms"][n] = v;
    metrics.write(jl.dump());
    if ((step + 1) % r.log_every == 0 || step + 1 == r.steps || step == 0) {
      std::string line = "step " + std::to_string(step + 1) + "/" + std::to_string(r.steps) + " | loss " +
                         fmt("%.4f", s.loss);
      for (const auto& [n, v] : term_loss) line += " | " + n + " " + fmt("%.4f", v);
      line += " | lr " + fmt("%.2e", s.lr) + " | " + fmt("%.0f tok/s", tps);
      if (peak.flops > 0) line += " | MFU " + fmt("%.1f%%", 100 * mfu);
      line += " | ETA " + fmt("%.0fs", eta);
      bar.println(line);
    }
    bar.update(step + 1, "step " + std::to_string(step + 1) + "/" + std::to_string(r.steps) + " | loss " +
                             fmt("%.4f", s.loss) + " | ETA " + fmt("%.0fs", eta));
    if ((r.eval_every > 0 && (step + 1) % r.eval_every == 0) || step + 1 == r.steps) {
      res.evals.push_back(evaluate(model, select_sets, r.seq_len, eval_rows, r.eval_max_sequences, step + 1));
      const EvalPoint& e = res.evals.back();
      log_eval(e, "eval");
      consider_best(e);
      const std::string why = stop_rule_fired(r, e, retain0);
      if (!why.empty()) {
        res.stop_reason = why;
        bar.println("stop: " + why + " at step " + std::to_string(step + 1));
        return true;
      }
    }
    return false;
  };
  hooks.checkpoint = checkpoint;
  // A run stopped during its final evaluation resumes there: its checkpoint is of the
  // last step and says how training ended, so no step runs again.
  const bool trained_before = resumed && !st.finished.empty();
  if (trained_before) {
    res.steps_run = st.step;
    res.stop_reason = st.finished;
    out << "training ended before the stop (" << st.finished << " at step " << st.step << " of " << r.steps
        << "); the final evaluation continues" << std::endl;
  } else {
    StepLoopConfig lc;
    lc.first = first;
    lc.stop_at = stop_at;
    lc.total = r.steps;
    lc.checkpoint_every = r.checkpoint_every;
    const StepLoopResult loop = run_step_loop(model, opt, r.schedule, lc, hooks);
    res.steps_run = loop.steps_run;
    res.stopped_by = loop.stopped_by;
    bar.finish();
    metrics.sync();
    if (!loop.ended_by_hook && res.steps_run < r.steps) {
      res.stop_reason = res.stopped_by ? std::string("stopped by ") + stop_signal_name(res.stopped_by) : "paused";
      out << res.stop_reason << " at step " << res.steps_run << " of " << r.steps
          << "; run again with train.resume=true to continue" << std::endl;
      return res;
    }
    if (res.evals.back().step != res.steps_run) {
      res.evals.push_back(evaluate(model, select_sets, r.seq_len, eval_rows, r.eval_max_sequences, res.steps_run));
      log_eval(res.evals.back(), "eval");
    }
    metrics.sync();
  }

  // Training is over: the optimizer state and the gradients go (for Llama-2-7B in bf16, 100
  // of the 117 GiB a GA+GD step holds on one GPU), making room for the original's and the
  // oracle's weights in the final evaluation.
  const bool on_device = dev.device != Device::cpu;
  if (on_device && !trained_before) res.device_training = device_allocator().stats();
  opt.release();
  model.release_training_state();
  model.set_forward_only(true);
  if (on_device) device_allocator().reset_peaks();

  // The final evaluation runs in parts (the final checkpoint, then each model's scoring),
  // and a stop signal is honoured between them: a scheduler's time limit must not find the
  // job deaf for the whole evaluation. The stop writes a run checkpoint of the last step
  // marked as trained, holding the parts already scored, and a resume does only the rest.
  json& done = st.final_evals;
  if (!trained_before) done = json::object();
  auto stop_before = [&](const char* part) {
    maybe_raise_test_signal_before(part, grid->rank());
    const int sig = agreed_stop_signal(*grid);
    if (sig == 0) return false;
    st.finished = res.stop_reason;
    checkpoint(res.steps_run);
    res.stopped_by = sig;
    out << "stopped by " << stop_signal_name(sig) << " during the final evaluation, before the " << part
        << " part; training had ended (" << res.stop_reason << " at step " << res.steps_run << " of " << r.steps
        << "): run again with train.resume=true to finish the evaluation without repeating a step" << std::endl;
    return true;
  };
  // What decides a part's numbers (as eval.cache keys them, and the step): a part scored
  // before the stop is reused only under the same settings.
  auto part_key = [&](const std::string& role, const std::string& sha) {
    json k = cache_key(role, sha);
    k["step"] = res.steps_run;
    return k;
  };
  auto reuse = [&](const std::string& role, const json& key) -> std::optional<FixedModelEval> {
    if (!done.contains(role)) return std::nullopt;
    if (done[role].value("key", json()) != key) {
      out << "the " << role << " model's final evaluation from before the stop had other settings: scored again"
          << std::endl;
      done.erase(role);
      return std::nullopt;
    }
    try {
      FixedModelEval e = fixed_eval_from_json(done[role].at("eval"));
      out << "the " << role << " model's final evaluation: from before the stop" << std::endl;
      return e;
    } catch (const json::exception&) {
      done.erase(role);
      return std::nullopt;
    }
  };
  auto keep = [&](const std::string& role, const json& key, const FixedModelEval& e) {
    const json j = fixed_eval_to_json(e);
    if (json_all_finite(j)) done[role] = {{"key", key}, {"eval", j}};  // else scored again after a stop
  };

  if (stop_before("final")) return res;
  save_model(r.out_dir, "final", model, r, res.steps_run, eval_to_json(res.evals.back()), tokenizer);
  res.final_dir = (fs::path(r.out_dir) / "final").string();

  // Final evaluation of the original, unlearned and oracle models: NLL over the whole of
  // every split unless eval.final_max_sequences caps it (in-run evaluations read
  // eval.max_sequences per split), and the MIA suite with every attack, on the report half
  // of forget and holdout.
  const int64_t final_n = r.eval_final_max_sequences;
  if (stop_before("original")) return res;
  const json original_part = part_key("original", model_sha);
  if (original_cached) {
    res.final_evals["before"] = original_cached->final_eval;
    res.mia["before"] = original_cached->mia;
    res.cached.push_back("original");
  } else if (std::optional<FixedModelEval> e = reuse("original", original_part)) {
    res.final_evals["before"] = e->final_eval;
    res.mia["before"] = e->mia;
  } else {
    if (!reference || reference->config().n_layers != cfg.n_layers) {
      reference.reset();  // first layers only: the original's scores need the whole model
      reference = std::make_unique<LlamaModel>(cfg, prec, grid, dev.device);
      reference->set_forward_only(true);
      load_weights(*reference, source);
    }
    const FixedModelEval o{evaluate(*reference, report_sets, r.seq_len, eval_rows, final_n, 0), std::nullopt,
                           full_mia(*reference, report_sets, r, decode), res.extra.at("before")};
    res.final_evals["before"] = o.final_eval;
    res.mia["before"] = o.mia;
    cache_store(original_key, o, "original model");
    keep("original", original_part, o);
  }
  reference.reset();  // the terms that read it are done; the oracle takes its place
  if (stop_before("unlearned")) return res;
  const json unlearned_part = part_key("unlearned", "");
  if (std::optional<FixedModelEval> e = reuse("unlearned", unlearned_part)) {
    res.extra["after"] = e->extra;
    res.final_evals["after"] = e->final_eval;
    res.mia["after"] = e->mia;
  } else {
    res.extra["after"] = extra_metrics(model, r, *streams.at("forget").ds, decode);
    res.final_evals["after"] = evaluate(model, report_sets, r.seq_len, eval_rows, final_n, res.steps_run);
    res.mia["after"] = full_mia(model, report_sets, r, decode);
    keep("unlearned", unlearned_part,
         {res.final_evals.at("after"), std::nullopt, res.mia.at("after"), res.extra.at("after")});
  }
  res.mia_auc_after = aucs(res.mia.at("after"));
  EvalPoint oracle_eval;
  std::string oracle_sha;
  if (!r.oracle.empty()) {
    if (stop_before("oracle")) return res;
    const ModelSource o = ModelSource::open(r.oracle);
    LETHE_CHECK(o.config().vocab_size == cfg.vocab_size, r.oracle, ": oracle vocabulary differs from the model's");
    check_tp(r, o.config(), r.oracle);
    LlamaModel om(o.config(), prec, grid, dev.device);
    om.set_forward_only(true);
    oracle_sha = load_weights(om, o);
    const json oracle_key = r.eval_cache.empty() ? json() : cache_key("oracle", oracle_sha);
    const json oracle_part = part_key("oracle", oracle_sha);
    std::optional<FixedModelEval> oc = cache_lookup(oracle_key, "oracle");
    if (oc) res.cached.push_back("oracle");
    else oc = reuse("oracle", oracle_part);
    if (!oc || !oc->in_run) {
      oc.emplace();
      oc->final_eval = evaluate(om, report_sets, r.seq_len, eval_rows, final_n, -1);
      // On the in-run sample too: the target levels drawn on the curves.
      oc->in_run = evaluate(om, select_sets, r.seq_len, eval_rows, r.eval_max_sequences, -1);
      oc->mia = full_mia(om, report_sets, r, decode);
      oc->extra = extra_metrics(om, r, *streams.at("forget").ds, decode);
      cache_store(oracle_key, *oc, "oracle");
      keep("oracle", oracle_part, *oc);
    }
    oracle_eval = oc->final_eval;
    res.final_evals["oracle"] = oracle_eval;
    res.final_evals["oracle_in_run"] = *oc->in_run;
    res.mia["oracle"] = oc->mia;
    res.mia_auc_oracle = aucs(res.mia.at("oracle"));
    res.extra["oracle"] = oc->extra;
  }
  if (on_device) res.device_final = device_allocator().stats();
  res.report_json = (fs::path(r.out_dir) / "report.json").string();
  res.report_md = (fs::path(r.out_dir) / "report.md").string();
  if (!lead) return res;
  // The whole unlearned model: under tp each rank holds a slice, so rank 0 reads the saved
  // final checkpoint back into a one-process model for the export and the report's hash.
  std::unique_ptr<LlamaModel> whole;
  if (model.tp_layout().tp > 1) {
    whole = std::make_unique<LlamaModel>(cfg, DType::f32);
    load_params(Checkpoint::open(res.final_dir), "weights", whole->params());
  }
  const ParamSet& final_params = whole ? whole->params() : model.params();
  if (r.export_hf) {
    std::vector<std::pair<std::string, Tensor>> w;
    // A bf16 run's weights are bf16 values: exported as bf16 they are exact and half the size.
    const bool bf16 = prec == Precision::bf16;
    for (size_t i = 0; i < final_params.size(); ++i) {
      const Tensor host = to_host(final_params[i]);  // a model on a device: one tensor at a time
      w.emplace_back(final_params.spec(i).name, bf16 ? host.to(DType::bf16) : host);
    }
    write_hf_model((fs::path(r.out_dir) / "hf").string(), hf_config_from_llama(cfg, bf16 ? "bfloat16" : "float32"), w,
                   int64_t(5) << 30);
  }

  ReportInput in;
  in.recipe = &r;
  in.model_sha256 = model_sha;
  in.final_sha256 = weights_sha256(final_params);
  in.oracle_sha256 = oracle_sha;
  for (const auto& [name, s] : streams) {
    in.data_sha256[name] = data_sha.at(name);
    in.data_docs[name] = s.ds->n_docs();
  }
  for (const auto& h : streams.at("forget").ds->doc_sha256) in.forget_doc_sha256.push_back(to_hex(h));
  in.result = &res;
  in.oracle = r.oracle.empty() ? nullptr : &oracle_eval;
  write_report(in, r.out_dir);
  out << "wrote " << res.final_dir << ", " << res.report_md << " (stop: " << res.stop_reason << ")" << std::endl;
  return res;
}

}  // namespace lethe
