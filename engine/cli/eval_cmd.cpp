#include <cstdio>
#include <iostream>

#include "engine/cli/commands.h"
#include "engine/cli/options.h"
#include "engine/eval/nll.h"
#include "engine/io/model_checkpoint.h"

namespace lethe::cli {

// `lethe eval CKPT DATA.h5 [seq_len=N] [batch=N] [max_sequences=N]`: NLL, perplexity and
// next-token accuracy of a model checkpoint on a token dataset. Prints counts and
// numbers only, never text.
int eval_main(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[0] == "-h" || args[0] == "--help") {
    const bool help = !args.empty() && (args[0] == "-h" || args[0] == "--help");
    (help ? std::cout : std::cerr) << "usage: lethe eval CKPT DATA.h5 [seq_len=N] [batch=N] [max_sequences=N]\n"
                 "                  [precision=P] [device=D]\n"
                 "  CKPT: a checkpoint directory or a run directory (its newest checkpoint).\n"
                 "  precision: bf16 or f32 (default: the precision the checkpoint was trained in);\n"
                 "  device: cpu, cuda or auto (default auto).\n"
                 "  Prints mean NLL (nats/token), perplexity and top-1 next-token accuracy.\n";
    return help ? 0 : 2;
  }
  int64_t seq_len = 0, batch = 4, max_seqs = 0;
  DeviceOptions dev_opt;
  for (const auto& [k, v] : parse_key_values(args, 2, "eval")) {
    if (take_device_option("eval", k, v, dev_opt)) continue;
    const int64_t x = option_int("eval", k, v);
    if (k == "seq_len") seq_len = x;
    else if (k == "batch") batch = x;
    else if (k == "max_sequences") max_seqs = x;
    else LETHE_FAIL("eval: unknown option '", k, "' (seq_len, batch, max_sequences, precision, device)");
  }
  std::string dir = args[0];
  if (!latest_checkpoint(dir).empty()) dir = latest_checkpoint(dir);
  const Checkpoint c = Checkpoint::open(dir);
  const LlamaConfig cfg = llama_config_from_json(c.manifest().at("model"), c.dir() + "/manifest.json");
  if (seq_len == 0) seq_len = std::min<int64_t>(cfg.max_seq_len, 1024);
  LETHE_CHECK(seq_len >= 1 && seq_len <= cfg.max_seq_len, "eval: seq_len must be in [1, ", cfg.max_seq_len, "]");
  LETHE_CHECK(batch >= 1, "eval: batch must be >= 1, got ", batch);
  LETHE_CHECK(max_seqs >= 0, "eval: max_sequences must be >= 0 (0 = all), got ", max_seqs);
  // The manifest's config sizes the model: check it against the stored tensors before
  // allocating, so a crafted config cannot ask for terabytes.
  for (const ParamSpec& s : llama_param_specs(cfg)) {
    LETHE_CHECK(c.has("weights", s.name), c.dir(), ": checkpoint lacks weight '", s.name, "'");
    LETHE_CHECK(c.global_shape("weights", s.name) == s.shape, c.dir(), ": weight '", s.name, "' has shape ",
                shape_str(c.global_shape("weights", s.name)), ", the manifest's model config needs ",
                shape_str(s.shape));
  }
  if (!dev_opt.precision && c.manifest().contains("precision"))
    dev_opt.precision = parse_precision(c.manifest().value("precision", "f32"), c.dir() + "/manifest.json: precision");
  const RunDevice dev = resolve_run_device(dev_opt.device, dev_opt.precision, "eval: device");
  LlamaModel model(cfg, dev.precision, nullptr, dev.device);
  model.set_forward_only(true);  // scored only: one layer's activations at a time
  load_params(c, "weights", model.params());
  const TokenDataset ds = load_token_dataset(args[1], cfg.vocab_size);
  const NllResult r = evaluate_nll(model, ds, seq_len, batch, max_seqs);
  std::printf("model %s | data %s (%lld docs, tokenizer %s)\n%s\n", cfg.name.c_str(), args[1].c_str(),
              (long long)ds.n_docs(), ds.tokenizer.c_str(), dev.line.c_str());
  std::printf("sequences %lld | tokens %lld | nll %.4f | perplexity %.3f | top1 %.4f\n", (long long)r.sequences,
              (long long)r.tokens, r.mean_nll(), r.perplexity(), r.accuracy());
  return 0;
}

}  // namespace lethe::cli
