#include <functional>
#include <memory>
#include <iostream>

#include "engine/cli/commands.h"
#include "engine/cli/options.h"
#include "engine/data/tokenizer_file.h"
#include "engine/eval/generate.h"
#include "engine/io/model_loader.h"

namespace lethe::cli {


// `lethe generate MODEL DATA.h5 [doc=N] [prefix=N] [tokens=N] [tokenizer=PATH]`: the
// greedy continuation of the first `prefix` tokens of one document. Unlike every other
// command it prints document text, because that is what it is asked for.
int generate_main(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[0] == "-h" || args[0] == "--help") {
    std::cout << "usage: lethe generate MODEL DATA.h5 [doc=0] [prefix=32] [tokens=32] [tokenizer=PATH]\n"
                 "                      [precision=bf16|f32] [device=cpu|cuda|auto]\n"
                 "  Greedy continuation of the first `prefix` tokens of document `doc`, decoded. MODEL is\n"
                 "  a lethe checkpoint or a transformers directory; byte-level datasets decode as bytes,\n"
                 "  others with tokenizer=PATH (a checkpoint from convert gguf-to-lethe, or its\n"
                 "  tokenizer.json), by default MODEL's own tokenizer.json.\n"
                 "  This prints document text: do not run it on data that must not be seen.\n";
    return args.size() >= 1 && (args[0] == "-h" || args[0] == "--help") ? 0 : 2;
  }
  int64_t doc = 0, prefix = 32, tokens = 32;
  std::string tokenizer;
  DeviceOptions dev_opt;
  for (const auto& [k, v] : parse_key_values(args, 2, "generate")) {
    if (k == "tokenizer") {
      tokenizer = v;
      continue;
    }
    if (take_device_option("generate", k, v, dev_opt)) continue;
    const int64_t x = option_int("generate", k, v);
    if (k == "doc") doc = x;
    else if (k == "prefix") prefix = x;
    else if (k == "tokens") tokens = x;
    else LETHE_FAIL("generate: unknown option '", k, "' (doc, prefix, tokens, tokenizer, precision, device)");
  }
  LETHE_CHECK(prefix >= 1 && tokens >= 1, "generate: prefix and tokens must be >= 1");
  const RunDevice dev = resolve_run_device(dev_opt.device, dev_opt.precision, "generate: device");
  const ModelSource source = ModelSource::open(args[0]);
  const TokenDataset ds = load_token_dataset(args[1], source.config().vocab_size);
  LETHE_CHECK(doc >= 0 && doc < ds.n_docs(), args[1], ": doc ", doc, " out of range [0, ", ds.n_docs(), ")");
  const int64_t begin = ds.offsets[size_t(doc)], len = ds.offsets[size_t(doc) + 1] - begin;
  LETHE_CHECK(len > prefix, args[1], ": document ", doc, " has ", len, " tokens, not more than prefix=", prefix);
  std::function<std::string(const std::vector<int32_t>&)> decode = bytes_decode;
  if (ds.tokenizer != "bytes") {
    const std::string src = tokenizer.empty() ? args[0] : tokenizer;
    std::shared_ptr<Detokenizer> d = find_detokenizer(src);
    LETHE_CHECK(d, src, ": holds no tokenizer.json to decode '", ds.tokenizer, "' ids; pass tokenizer=PATH");
    decode = [d](const std::vector<int32_t>& ids) { return d->decode(ids); };
  }
  LlamaModel model(source.config(), dev.precision, nullptr, dev.device);
  model.set_forward_only(true);  // decoding only
  load_weights(model, source);
  const std::vector<int32_t> head(ds.tokens.begin() + begin, ds.tokens.begin() + begin + prefix);
  const std::vector<int32_t> out = greedy_continue(model, head, tokens);
  int64_t same = 0;
  for (size_t i = 0; i < out.size() && int64_t(prefix + i) < len; ++i) same += out[i] == ds.tokens[size_t(begin + prefix) + i];
  std::cout << "prefix (" << prefix << " tokens): " << decode(head) << "\n"
            << "greedy continuation (" << out.size() << " tokens): " << decode(out) << "\n"
            << "same token as the document at " << same << " of " << out.size() << " positions\n";
  return 0;
}

}  // namespace lethe::cli
