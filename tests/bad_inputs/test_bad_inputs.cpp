// Malformed-input corpus: every case runs the `lethe` binary on a broken config, recipe,
// checkpoint, manifest, safetensors file, GGUF file, token dataset or command line, and
// must end with exit 1 or 2 (never 0, never a signal), a message on stderr that names the
// culprit, no output left behind, no input changed, within a time limit.
//
// The broken files are made here from the valid fixtures (data/models, tests/golden,
// data/tokens), so the corpus is reproducible and the repository holds no binary copies.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/data/token_dataset.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/sha256.h"
#include "tests/bad_inputs/lethe_run.h"

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using lethe::Tensor;

// A run that takes longer is a hang (the slowest valid case, a 0.8M-parameter model load,
// takes well under a second).
constexpr int kTimeoutS = 60;
// Address-space cap for each run: a huge declared size must be refused, not attempted; the
// cap turns an attempt into a failed allocation instead of the kernel's OOM killer.
constexpr rlim_t kMemCap = rlim_t(6) << 30;
// AddressSanitizer reserves terabytes of address space for its shadow memory, which the
// cap would forbid; under it an attempted huge allocation is a sanitizer report instead.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

std::string src(const std::string& rel) { return std::string(LETHE_SOURCE_DIR) + "/" + rel; }

using lethe::test::RunResult;
using lethe::test::slurp;
using lethe::test::spit;

RunResult run_lethe(const std::vector<std::string>& args, const fs::path& dir,
                    const std::map<std::string, std::string>& env = {}) {
  lethe::test::RunOptions o;
  o.env = env;
  o.timeout_s = kTimeoutS;
  // A sanitizer build (this one, or another run through $LETHE_TEST_BIN) reserves
  // terabytes of address space.
  o.mem_cap = std::getenv("LETHE_TEST_BIN") || kAddressSanitizer ? 0 : kMemCap;
  return lethe::test::run_program(args, dir, o);
}

// Every regular file under p with its contents' hash: "unchanged" means equal maps.
std::map<std::string, std::string> tree(const fs::path& p) {
  std::map<std::string, std::string> m;
  if (!fs::exists(p)) return m;
  if (fs::is_regular_file(p)) {
    m[""] = lethe::to_hex(lethe::sha256_file(p.string()));
    return m;
  }
  for (const auto& e : fs::recursive_directory_iterator(p))
    m[fs::relative(e.path(), p).string()] =
        e.is_regular_file() ? lethe::to_hex(lethe::sha256_file(e.path().string())) : std::string("dir");
  return m;
}

// ---- checkpoint surgery -------------------------------------------------------------

// Recomputes the manifest's checksums and the COMPLETE marker, as someone who crafts a
// checkpoint would: the reader must then catch the damage by validation, not by hash.
void resign(const fs::path& ck, json m) {
  for (auto& s : m["shards"])
    if (s.contains("file") && s["file"].is_string() && fs::is_regular_file(ck / s["file"].get<std::string>())) {
      const fs::path p = ck / s["file"].get<std::string>();
      s["bytes"] = fs::file_size(p);
      s["sha256"] = lethe::to_hex(lethe::sha256_file(p.string()));
    }
  const std::string text = m.dump(2) + "\n";
  spit(ck / "manifest.json", text);
  spit(ck / "COMPLETE", lethe::to_hex(lethe::sha256(text.data(), text.size())) + "\n");
}
void resign_text(const fs::path& ck, const std::string& text) {
  spit(ck / "manifest.json", text);
  spit(ck / "COMPLETE", lethe::to_hex(lethe::sha256(text.data(), text.size())) + "\n");
}
json manifest(const fs::path& ck) { return json::parse(slurp(ck / "manifest.json")); }

struct Piece {
  Tensor t;
  std::vector<int64_t> global_shape, offset;
};
// Rewrites shard_00000.h5 after `edit` has changed its pieces (keyed "/group/name").
void rewrite_shard(const fs::path& ck, const std::function<void(std::map<std::string, Piece>&)>& edit) {
  const fs::path shard = ck / "shard_00000.h5";
  std::map<std::string, Piece> pieces;
  {
    const lethe::h5::File f = lethe::h5::File::open_read(shard.string());
    for (const auto& g : f.list("/"))
      for (const auto& n : f.list("/" + g)) {
        const std::string d = "/" + g + "/" + n;
        pieces[d] = {f.read_tensor(d), f.attr_ints(d, "global_shape"), f.attr_ints(d, "offset")};
      }
  }
  edit(pieces);
  {
    lethe::h5::File f = lethe::h5::File::create(shard.string());
    for (const auto& [d, p] : pieces) {
      f.write_tensor(d, p.t);
      f.set_attr(d, "global_shape", p.global_shape);
      f.set_attr(d, "offset", p.offset);
    }
  }
  resign(ck, manifest(ck));
}

// A dataset whose declared shape is `n` elements but which stores none: chunked, so HDF5
// allocates nothing and the file stays a few KB.
void add_sparse_dataset(const fs::path& file, const std::string& name, hsize_t n, hid_t type,
                        const std::vector<int64_t>& global_shape = {}) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  if (H5Lexists(f, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(f, name.c_str(), H5P_DEFAULT);
  const hid_t sp = H5Screate_simple(1, &n, nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hsize_t chunk = 1 << 16;
  H5Pset_chunk(dcpl, 1, &chunk);
  const hid_t d = H5Dcreate2(f, name.c_str(), type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  if (!global_shape.empty()) {  // the checkpoint attributes of a whole tensor
    const std::vector<int64_t> offset(global_shape.size(), 0);
    hsize_t k = global_shape.size();
    const hid_t asp = H5Screate_simple(1, &k, nullptr);
    for (const auto& [an, v] : {std::pair{"global_shape", &global_shape}, std::pair{"offset", &offset}}) {
      const hid_t a = H5Acreate2(d, an, H5T_NATIVE_INT64, asp, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_INT64, v->data());
      H5Aclose(a);
    }
    H5Sclose(asp);
  }
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(sp);
  H5Fclose(f);
}

// ---- token datasets -----------------------------------------------------------------

struct Tokens {
  std::vector<int32_t> ids;
  std::vector<int64_t> offsets;
  std::map<std::string, std::string> sattr{{"format", "lethe-tokens"}, {"tokenizer", "bytes"}, {"source", "test"}};
  std::map<std::string, int64_t> iattr{{"version", 1}, {"vocab_size", 256}, {"bos_id", -1}, {"eos_id", -1}};
  bool tokens_as_f32 = false, tokens_2d = false;
};
Tokens valid_tokens() {
  Tokens t;
  const std::string docs[] = {"It is a truth universally acknowledged. ", "The second document, a little longer. ",
                              "Third."};
  t.offsets.push_back(0);
  for (const auto& d : docs) {
    for (unsigned char c : d) t.ids.push_back(c);
    t.offsets.push_back(int64_t(t.ids.size()));
  }
  return t;
}
void write_tokens(const fs::path& p, const Tokens& t) {
  lethe::h5::File f = lethe::h5::File::create(p.string());
  const int64_t n = int64_t(t.ids.size());
  if (t.tokens_as_f32) {
    Tensor x = Tensor::empty({n}, lethe::DType::f32);
    for (int64_t i = 0; i < n; ++i) x.data<float>()[i] = float(t.ids[size_t(i)]) + 0.5f;
    f.write_tensor("/tokens", x);
  } else {
    const lethe::Shape s = t.tokens_2d ? lethe::Shape{n / 2, 2} : lethe::Shape{n};
    Tensor x = Tensor::empty(s, lethe::DType::i32);
    std::memcpy(x.raw(), t.ids.data(), size_t(t.tokens_2d ? 2 * (n / 2) : n) * 4);
    f.write_tensor("/tokens", x);
  }
  f.write_i64("/doc_offsets", t.offsets);
  for (const auto& [k, v] : t.sattr) f.set_attr("/", k, v);
  for (const auto& [k, v] : t.iattr) f.set_attr("/", k, v);
}

// ---- safetensors and GGUF byte surgery ----------------------------------------------

struct St {
  uint64_t hlen;
  json header;
  std::string data;
};
St st_read(const fs::path& p) {
  const std::string b = slurp(p);
  St s;
  std::memcpy(&s.hlen, b.data(), 8);
  s.header = json::parse(b.substr(8, s.hlen));
  s.data = b.substr(8 + s.hlen);
  return s;
}
void st_write(const fs::path& p, const json& header, const std::string& data) {
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  uint64_t n = h.size();
  std::string b(reinterpret_cast<const char*>(&n), 8);
  spit(p, b + h + data);
}

// Byte offset just after the GGUF tensor info's name `name` (its n_dims field).
size_t gguf_tensor_info(const std::string& bytes, const std::string& name) {
  std::string needle(8, '\0');
  const uint64_t len = name.size();
  std::memcpy(needle.data(), &len, 8);
  needle += name;
  size_t at = bytes.find(needle);
  // Metadata strings may repeat the name; the tensor info is the last occurrence.
  for (size_t next = at; next != std::string::npos; next = bytes.find(needle, next + 1)) at = next;
  EXPECT_NE(at, std::string::npos) << name;
  return at + needle.size();
}
template <typename T>
void poke(std::string& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}

// ---- the corpus ---------------------------------------------------------------------

struct Case {
  std::string format, name;
  std::vector<std::string> args;
  std::string expect;                   // substring of stderr
  std::vector<fs::path> must_not_exist;  // outputs the run must not leave
  std::vector<fs::path> unchanged;       // inputs the run must not touch
  std::map<std::string, std::string> env = {};
};

class BadInputs : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("lethe_bad_inputs_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(root_);
  }
  fs::path root_;
};

TEST_F(BadInputs, EveryCaseFailsCleanly) {
  const fs::path base = root_ / "base";
  fs::create_directories(base);
  // Valid fixtures: a lethe checkpoint of the tiny pretrained model, its transformers
  // directory, a GGUF model, a token dataset and a byte corpus.
  {
    const RunResult r = run_lethe({"convert", "hf-to-lethe", src("data/models/tiny-lm-full"), (base / "ck").string()}, base);
    ASSERT_EQ(r.code, 0) << r.err;
  }
  write_tokens(base / "tokens.h5", valid_tokens());
  std::string corpus;
  for (int i = 0; i < 40; ++i) corpus += "one two three four five six seven eight nine ten. ";
  spit(base / "corpus.txt", corpus);
  {
    const RunResult r = run_lethe({"eval", (base / "ck").string(), (base / "tokens.h5").string(), "seq_len=16"}, base);
    ASSERT_EQ(r.code, 0) << "the valid fixtures must pass: " << r.err;
  }

  std::vector<Case> cases;
  int serial = 0;
  auto dir_for = [&](const std::string& name) {
    const fs::path d = root_ / (std::to_string(++serial) + "_" + name);
    fs::create_directories(d);
    return d;
  };

  // -- train configs (YAML) --
  auto train_yaml = [&](const fs::path& d, const std::string& body) {
    spit(d / "train.yaml", body);
    return (d / "train.yaml").string();
  };
  const std::string good_train = "model: " + src("configs/models/tiny.yaml") + "\ndata:\n  path: " +
                                 (base / "corpus.txt").string() +
                                 "\n  format: bytes\ntrain:\n  steps: 2\n  batch_size: 2\n  seq_len: 16\n";
  auto train_case = [&](const std::string& name, const std::string& body, std::vector<std::string> extra,
                        const std::string& expect) {
    const fs::path d = dir_for(name);
    std::vector<std::string> args{"train", train_yaml(d, body), "checkpoint.dir=" + (d / "out").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    cases.push_back({"yaml", name, args, expect, {d / "out"}, {d / "train.yaml"}});
  };
  train_case("yaml_unknown_key", good_train + "  learning_rate: 0.1\n", {}, "key 'train.learning_rate': unknown key");
  train_case("yaml_wrong_type", good_train, {"train.steps=abc"}, "key 'train.steps': expected an integer");
  train_case("yaml_negative_steps", good_train, {"train.steps=-5"}, "train.steps");
  train_case("yaml_integer_overflow", good_train, {"train.batch_size=99999999999999999999999"},
             "key 'train.batch_size': expected an integer");
  train_case("yaml_float_overflow", good_train + "optimizer:\n  lr: 1e400\n", {}, "optimizer.lr");
  train_case("yaml_nan_lr", good_train + "optimizer:\n  lr: .nan\n", {}, "optimizer.lr");
  train_case("yaml_truncated", good_train.substr(0, good_train.find("format")) + "format: \"byt", {}, "train.yaml");
  train_case("yaml_not_a_mapping", "- just\n- a list\n", {}, "train.yaml");
  train_case("yaml_empty", "", {}, "train.yaml");
  train_case("yaml_binary_garbage", std::string("model: \x01\xff\xfe\x00\x00 {[", 14), {}, "train.yaml");
  train_case("yaml_heads_not_divisible", good_train, {"model.n_kv_heads=3"}, "n_heads (4) is not divisible");
  train_case("yaml_negative_vocab", good_train, {"model.vocab_size=-256"}, "vocab_size");
  train_case("yaml_huge_model", good_train, {"model.dim=4194304", "model.ffn_dim=16777216"}, "parameters and needs about");
  train_case("yaml_seq_len_beyond_model", good_train, {"train.seq_len=100000"}, "train.seq_len");
  train_case("yaml_missing_data", good_train, {"data.path=" + (root_ / "nope.bin").string()}, "nope.bin");
  train_case("yaml_bad_override", good_train, {"train.steps"}, "unexpected argument 'train.steps'");

  // -- unlearning recipes --
  std::string recipe = slurp(src("configs/recipes/ga_gd.yaml"));
  for (size_t at; (at = recipe.find("../../")) != std::string::npos;) recipe.replace(at, 6, std::string(LETHE_SOURCE_DIR) + "/");
  auto recipe_case = [&](const std::string& name, const std::string& body, std::vector<std::string> extra,
                         const std::string& expect) {
    const fs::path d = dir_for(name);
    spit(d / "recipe.yaml", body);
    std::vector<std::string> args{"unlearn", (d / "recipe.yaml").string(), "output.dir=" + (d / "out").string(),
                                  "train.steps=2", "eval.every=0", "eval.max_sequences=4", "data.seq_len=32",
                                  "data.min_targets=8", "eval.verbatim_max_docs=1", "eval.mia_max_docs=4"};
    args.insert(args.end(), extra.begin(), extra.end());
    cases.push_back({"recipe", name, args, expect, {d / "out"}, {d / "recipe.yaml"}});
  };
  recipe_case("recipe_unknown_term", recipe, {"terms.forget.type=forgetify"}, "unknown term type 'forgetify'");
  recipe_case("recipe_unknown_stream", recipe, {"terms.forget.stream=secret"}, "terms.forget.stream");
  recipe_case("recipe_nan_weight", recipe, {"terms.retain.weight=nan"}, "terms.retain.weight");
  recipe_case("recipe_missing_forget", recipe, {"data.forget=" + (root_ / "missing.h5").string()}, "missing.h5");
  recipe_case("recipe_missing_model", recipe, {"model=" + (root_ / "no_model").string()}, "no_model");
  recipe_case("recipe_min_targets", recipe, {"data.min_targets=0"}, "data.min_targets");
  recipe_case("recipe_bad_precision", recipe, {"train.precision=f16"}, "train.precision': must be bf16 or f32");
  recipe_case("recipe_cuda", recipe, {"train.device=cuda"}, "train.device': cuda: ");
  // 2M sequences a step: terabytes of activations by the plan, refused before allocating.
  recipe_case("recipe_does_not_fit", recipe, {"train.batch_size=2000000"}, "per process by its plan");
  recipe_case("recipe_token_beyond_vocab", recipe,
              {"data.forget=" + [&] {
                 Tokens t = valid_tokens();
                 t.iattr["vocab_size"] = 300;
                 t.ids[5] = 299;
                 write_tokens(root_ / "forget_vocab300.h5", t);
                 return (root_ / "forget_vocab300.h5").string();
               }()},
              "larger than the model's");

  // -- command lines --
  auto cli_case = [&](const std::string& name, std::vector<std::string> args, const std::string& expect,
                      std::vector<fs::path> absent = {}) {
    cases.push_back({"cli", name, args, expect, absent, {base / "ck"}});
  };
  const std::string ck = (base / "ck").string(), toks = (base / "tokens.h5").string();
  cli_case("cli_unknown_command", {"frobnicate"}, "unknown command 'frobnicate'");
  cli_case("cli_train_no_config", {"train"}, "usage: lethe train");
  cli_case("cli_eval_no_data", {"eval", ck}, "usage: lethe eval");
  cli_case("cli_convert_unknown_kind", {"convert", "pickle-to-lethe", ck, (root_ / "pk").string()},
           "unknown conversion", {root_ / "pk"});
  cli_case("cli_checkpoint_info_two_dirs", {"checkpoint-info", ck, ck}, "usage: lethe checkpoint-info");
  cli_case("cli_eval_negative_seq_len", {"eval", ck, toks, "seq_len=-1"}, "seq_len");
  cli_case("cli_eval_zero_batch", {"eval", ck, toks, "batch=0"}, "batch");
  cli_case("cli_eval_overflow", {"eval", ck, toks, "batch=99999999999999999999"}, "option 'batch' needs an integer");
  cli_case("cli_eval_negative_max", {"eval", ck, toks, "max_sequences=-3"}, "max_sequences");
  cli_case("cli_eval_unknown_option", {"eval", ck, toks, "temperature=2"}, "unknown option 'temperature'");
  cli_case("cli_eval_bad_precision", {"eval", ck, toks, "precision=fp8"}, "eval: precision: must be bf16 or f32");
  cli_case("cli_eval_bad_device", {"eval", ck, toks, "device=tpu"}, "eval: device: must be cpu, cuda or auto");
  // cuda: no CUDA in the build, no visible GPU, or (in this version) no model path on it.
  cli_case("cli_eval_cuda", {"eval", ck, toks, "device=cuda"}, "eval: device: cuda: ");
  cli_case("cli_generate_cuda", {"generate", ck, toks, "device=cuda"}, "generate: device: cuda: ");
  cli_case("cli_convert_bad_shard_gb", {"convert", "lethe-to-hf", ck, (root_ / "hf_out1").string(), "shard_gb=lots"},
           "shard_gb", {root_ / "hf_out1"});
  cli_case("cli_convert_nan_shard_gb", {"convert", "lethe-to-hf", ck, (root_ / "hf_out2").string(), "shard_gb=nan"},
           "shard_gb", {root_ / "hf_out2"});
  cli_case("cli_convert_out_exists", {"convert", "hf-to-lethe", src("data/models/tiny-lm-full"), ck}, "already exists");
  cli_case("cli_checkpoint_info_missing", {"checkpoint-info", (root_ / "nowhere").string()}, "nowhere");
  cli_case("cli_model_info_missing", {"model-info", (root_ / "nothing.yaml").string()}, "nothing.yaml");

  // -- checkpoints and manifests: each case gets its own copy, run through eval --
  auto ck_case = [&](const std::string& name, const std::function<void(const fs::path&)>& damage,
                     const std::string& expect, const std::string& cmd = "eval") {
    const fs::path d = dir_for(name);
    fs::copy(base / "ck", d / "ck", fs::copy_options::recursive);
    damage(d / "ck");
    std::vector<std::string> args;
    if (cmd == "eval") args = {"eval", (d / "ck").string(), toks, "seq_len=16"};
    else if (cmd == "info") args = {"checkpoint-info", (d / "ck").string()};
    else args = {"convert", "lethe-to-hf", (d / "ck").string(), (d / "hf").string()};
    cases.push_back({"checkpoint", name, args, expect, {d / "hf"}, {d / "ck"}});
  };
  const std::string shard = "shard_00000.h5";
  ck_case("ck_no_marker", [](const fs::path& c) { fs::remove(c / "COMPLETE"); }, "no COMPLETE marker");
  ck_case("ck_manifest_edited", [](const fs::path& c) {
    std::string m = slurp(c / "manifest.json");
    m[m.find("\"step\": 0") + 8] = '7';
    spit(c / "manifest.json", m);
  }, "does not match the hash in its COMPLETE marker");
  ck_case("ck_shard_bit_flip", [&](const fs::path& c) {
    std::string b = slurp(c / shard);
    b[b.size() / 2] ^= 0x10;
    spit(c / shard, b);
  }, "checksum mismatch", "info");
  ck_case("ck_shard_truncated_resigned", [&](const fs::path& c) {
    std::string b = slurp(c / shard);
    spit(c / shard, b.substr(0, b.size() / 3));
    resign(c, manifest(c));
  }, shard);
  ck_case("ck_shard_header_zeroed_resigned", [&](const fs::path& c) {
    std::string b = slurp(c / shard);
    std::fill(b.begin(), b.begin() + 64, '\0');
    spit(c / shard, b);
    resign(c, manifest(c));
  }, "not an HDF5 file", "info");
  ck_case("ck_manifest_not_json", [](const fs::path& c) { resign_text(c, "{\"format\": \"lethe-checkpoint\", "); },
          "not valid JSON");
  ck_case("ck_manifest_version", [](const fs::path& c) {
    json m = manifest(c);
    m["version"] = 99;
    resign(c, m);
  }, "unsupported checkpoint version");
  ck_case("ck_manifest_no_shards", [](const fs::path& c) {
    json m = manifest(c);
    m["shards"] = json::array();
    resign(c, m);
  }, "no shards listed", "info");
  ck_case("ck_manifest_shard_traversal", [&](const fs::path& c) {
    json m = manifest(c);
    m["shards"][0]["file"] = "../../../etc/passwd";
    resign(c, m);
  }, "is not a plain file name", "info");
  ck_case("ck_manifest_file_traversal", [&](const fs::path& c) {
    json m = manifest(c);
    m["files"] = json::array({{{"file", "../base/tokens.h5"}, {"sha256", "00"}}});
    resign(c, m);
  }, "is not a plain file name", "info");
  ck_case("ck_manifest_sha_wrong_type", [&](const fs::path& c) {
    json m = manifest(c);
    m["shards"][0]["sha256"] = 12345;
    resign_text(c, m.dump(2) + "\n");
  }, "manifest.json", "info");
  ck_case("ck_manifest_model_wrong_type", [](const fs::path& c) {
    json m = manifest(c);
    m["model"]["dim"] = "sixty-four";
    resign(c, m);
  }, "manifest.json");
  ck_case("ck_manifest_model_negative", [](const fs::path& c) {
    json m = manifest(c);
    m["model"]["n_layers"] = -2;
    resign(c, m);
  }, "n_layers");
  ck_case("ck_manifest_model_huge", [](const fs::path& c) {
    json m = manifest(c);
    m["model"]["dim"] = int64_t(1) << 22;
    m["model"]["ffn_dim"] = int64_t(1) << 24;
    resign(c, m);
  }, "model.embed_tokens.weight");
  ck_case("ck_tensor_wrong_shape", [&](const fs::path& c) {
    rewrite_shard(c, [](auto& p) {
      Piece& e = p.at("/weights/model.norm.weight");
      e.t = Tensor::zeros({3}, lethe::DType::f32);
      e.global_shape = {3};
    });
  }, "model.norm.weight");
  ck_case("ck_tensor_wrong_dtype", [&](const fs::path& c) {
    rewrite_shard(c, [](auto& p) {
      Piece& e = p.at("/weights/model.norm.weight");
      e.t = Tensor::zeros(e.t.shape(), lethe::DType::i32);
    });
  }, "model.norm.weight");
  ck_case("ck_tensor_negative_offset", [&](const fs::path& c) {
    rewrite_shard(c, [](auto& p) { p.at("/weights/model.norm.weight").offset = {-4}; });
  }, "lies outside its global shape", "info");
  ck_case("ck_tensor_offset_past_end", [&](const fs::path& c) {
    rewrite_shard(c, [](auto& p) { p.at("/weights/model.norm.weight").offset = {int64_t(1) << 62}; });
  }, "model.norm.weight", "info");
  ck_case("ck_tensor_offset_overflow", [&](const fs::path& c) {
    // offset + shape wraps around int64: a bounds check written as a sum would pass it.
    rewrite_shard(c, [](auto& p) { p.at("/weights/model.norm.weight").offset = {INT64_MAX - 10}; });
  }, "lies outside its global shape", "info");
  ck_case("ck_tensor_huge_global_shape", [&](const fs::path& c) {
    rewrite_shard(c, [](auto& p) {
      Piece& e = p.at("/weights/model.norm.weight");
      e.global_shape = {int64_t(1) << 40};
    });
  }, "model.norm.weight", "info");
  ck_case("ck_tensor_huge_sparse_dataset", [&](const fs::path& c) {
    add_sparse_dataset(c / shard, "/weights/model.norm.weight", hsize_t(1) << 36, H5T_NATIVE_FLOAT,
                       {int64_t(1) << 36});
    resign(c, manifest(c));
  }, "model.norm.weight", "info");

  // -- token datasets (HDF5), through eval --
  auto tok_case = [&](const std::string& name, const std::function<void(const fs::path&)>& make,
                      const std::string& expect) {
    const fs::path d = dir_for(name);
    make(d / "data.h5");
    cases.push_back({"tokens", name, {"eval", ck, (d / "data.h5").string(), "seq_len=16"}, expect, {}, {d / "data.h5"}});
  };
  auto tok_edit = [&](const std::string& name, const std::function<void(Tokens&)>& edit, const std::string& expect) {
    tok_case(name, [&, edit](const fs::path& p) {
      Tokens t = valid_tokens();
      edit(t);
      write_tokens(p, t);
    }, expect);
  };
  tok_case("tok_not_hdf5", [](const fs::path& p) { spit(p, "this is text, not HDF5\n"); }, "not an HDF5 file");
  tok_case("tok_truncated", [&](const fs::path& p) {
    const std::string b = slurp(base / "tokens.h5");
    spit(p, b.substr(0, b.size() / 2));
  }, "data.h5");
  tok_case("tok_bit_flips_in_header", [&](const fs::path& p) {
    std::string b = slurp(base / "tokens.h5");
    for (size_t i = 100; i < std::min<size_t>(b.size(), 900); i += 97) b[i] ^= 0x5a;
    spit(p, b);
  }, "data.h5");
  tok_edit("tok_wrong_format", [](Tokens& t) { t.sattr["format"] = "something-else"; }, "not a lethe token dataset");
  tok_edit("tok_wrong_version", [](Tokens& t) { t.iattr["version"] = 2; }, "version 2 is not supported");
  tok_edit("tok_zero_vocab", [](Tokens& t) { t.iattr["vocab_size"] = 0; }, "vocab_size 0 must be positive");
  tok_edit("tok_vocab_beyond_model", [](Tokens& t) { t.iattr["vocab_size"] = 50000; }, "larger than the model's");
  tok_edit("tok_id_beyond_vocab", [](Tokens& t) { t.ids[7] = 256; }, "token 256 at index 7 is outside the vocabulary");
  tok_edit("tok_negative_id", [](Tokens& t) { t.ids[3] = -1; }, "token -1 at index 3");
  tok_edit("tok_offsets_not_zero", [](Tokens& t) { t.offsets[0] = 1; }, "/doc_offsets[0] is 1");
  tok_edit("tok_offsets_decrease", [](Tokens& t) { t.offsets[1] = t.offsets[2] + 1; }, "decreases at document 1");
  tok_edit("tok_offsets_past_end", [](Tokens& t) { t.offsets.back() = int64_t(1) << 62; }, "/doc_offsets ends at");
  tok_edit("tok_tokens_2d", [](Tokens& t) { t.tokens_2d = true; }, "/tokens must be 1-D");
  tok_edit("tok_tokens_float", [](Tokens& t) { t.tokens_as_f32 = true; }, "/tokens");
  tok_case("tok_vocab_attr_string", [&](const fs::path& p) {
    Tokens t = valid_tokens();
    t.iattr.erase("vocab_size");
    t.sattr["vocab_size"] = "256";
    write_tokens(p, t);
  }, "attribute 'vocab_size'");
  tok_case("tok_missing_tokens", [&](const fs::path& p) {
    lethe::h5::File f = lethe::h5::File::create(p.string());
    f.write_i64("/doc_offsets", {0, 4});
    f.set_attr("/", "format", std::string("lethe-tokens"));
    f.set_attr("/", "version", int64_t(1));
    f.set_attr("/", "tokenizer", std::string("bytes"));
    f.set_attr("/", "vocab_size", int64_t(256));
  }, "no dataset '/tokens'");
  {
    // Found by fuzz_token_dataset: a corrupt global heap behind a variable-length string
    // attribute makes libhdf5 (1.10) loop forever inside H5Aread. The read deadline ends
    // the run naming the file (3 s here; 120 s plus the file's size by default).
    const fs::path d = dir_for("tok_hdf5_heap_loop");
    fs::copy_file(src("tests/bad_inputs/fixtures/tok_hdf5_heap_loop.h5"), d / "data.h5");
    cases.push_back({"tokens", "tok_hdf5_heap_loop", {"eval", ck, (d / "data.h5").string(), "seq_len=16"},
                     "data.h5: reading it did not finish within 3 s", {}, {d / "data.h5"},
                     {{"LETHE_READ_TIMEOUT_S", "3"}}});
  }
  if (!kAddressSanitizer) {
    // Also from fuzz_token_dataset: libhdf5 copies through a wild pointer (SIGSEGV) while
    // reading this file's attributes. The crash is reported as an error naming the file.
    // Under AddressSanitizer the interceptor of that memcpy reports libhdf5's bug first.
    const fs::path d = dir_for("tok_hdf5_crash");
    fs::copy_file(src("tests/bad_inputs/fixtures/tok_hdf5_crash.h5"), d / "data.h5");
    cases.push_back({"tokens", "tok_hdf5_crash", {"eval", ck, (d / "data.h5").string(), "seq_len=16"},
                     "data.h5: the HDF5 library crashed reading it", {}, {d / "data.h5"}});
  }
  tok_case("tok_huge_declared_tokens", [&](const fs::path& p) {
    Tokens t = valid_tokens();
    write_tokens(p, t);
    add_sparse_dataset(p, "/tokens", hsize_t(1) << 36, H5T_NATIVE_INT32);
  }, "/tokens");

  // -- safetensors (a transformers directory), through convert hf-to-lethe --
  auto st_case = [&](const std::string& name, const std::function<void(const fs::path&)>& damage,
                     const std::string& expect) {
    const fs::path d = dir_for(name);
    fs::copy(src("data/models/tiny-lm-full"), d / "hf", fs::copy_options::recursive);
    damage(d / "hf");
    cases.push_back({"safetensors", name, {"convert", "hf-to-lethe", (d / "hf").string(), (d / "out").string()}, expect,
                     {d / "out"}, {d / "hf"}});
  };
  auto st_edit = [&](const std::string& name, const std::function<void(json&, std::string&)>& edit,
                     const std::string& expect) {
    st_case(name, [edit](const fs::path& hf) {
      St s = st_read(hf / "model.safetensors");
      edit(s.header, s.data);
      st_write(hf / "model.safetensors", s.header, s.data);
    }, expect);
  };
  const std::string emb = "model.embed_tokens.weight";
  st_case("st_too_small", [](const fs::path& hf) { spit(hf / "model.safetensors", "abc"); }, "too small");
  st_case("st_huge_header_length", [](const fs::path& hf) {
    std::string b = slurp(hf / "model.safetensors");
    poke<uint64_t>(b, 0, uint64_t(1) << 63);
    spit(hf / "model.safetensors", b);
  }, "exceeds the 100 MB limit");
  st_case("st_header_past_end", [](const fs::path& hf) {
    std::string b = slurp(hf / "model.safetensors");
    spit(hf / "model.safetensors", b.substr(0, 200));
  }, "runs past the end of the file");
  st_case("st_header_bit_flip", [](const fs::path& hf) {
    std::string b = slurp(hf / "model.safetensors");
    b[8] ^= 0x40;  // '{' becomes ';'
    spit(hf / "model.safetensors", b);
  }, "header is not valid JSON");
  st_case("st_truncated_data", [](const fs::path& hf) {
    std::string b = slurp(hf / "model.safetensors");
    spit(hf / "model.safetensors", b.substr(0, b.size() - 1000));
  }, "outside the data section");
  st_edit("st_offsets_past_end", [&](json& h, std::string& d) {
    h[emb]["data_offsets"] = {d.size() + 4, d.size() + 8};
  }, "outside the data section");
  st_edit("st_offsets_negative", [&](json& h, std::string&) { h[emb]["data_offsets"] = {-16, 0}; },
          "data_offsets must be two non-negative integers");
  st_edit("st_shape_bytes_mismatch", [&](json& h, std::string&) { h[emb]["shape"] = {256, 63}; }, "bytes for shape");
  st_edit("st_shape_overflow", [&](json& h, std::string&) { h[emb]["shape"] = {uint64_t(1) << 40, uint64_t(1) << 40}; },
          emb);
  st_edit("st_shape_negative", [&](json& h, std::string&) { h[emb]["shape"] = {-256, -64}; }, "non-negative integers");
  st_edit("st_unknown_dtype", [&](json& h, std::string&) { h[emb]["dtype"] = "Q9"; }, "unknown dtype 'Q9'");
  st_edit("st_wrong_dtype", [&](json& h, std::string&) { h[emb]["dtype"] = "I32"; }, emb);
  st_edit("st_wrong_shape", [&](json& h, std::string&) {
    const auto s = h[emb]["shape"];
    h[emb]["shape"] = {s[1], s[0]};
  }, emb);
  st_edit("st_overlap", [&](json& h, std::string&) {
    h["model.norm.weight"]["data_offsets"] = {h[emb]["data_offsets"][0], h[emb]["data_offsets"][0].get<uint64_t>() + 256};
  }, "overlap");
  st_case("st_config_not_json", [](const fs::path& hf) { spit(hf / "config.json", "{\"vocab_size\": "); },
          "config.json: not valid JSON");
  st_case("st_config_negative_layers", [](const fs::path& hf) {
    json c = json::parse(slurp(hf / "config.json"));
    c["num_hidden_layers"] = -1;
    spit(hf / "config.json", c.dump());
  }, "n_layers must be positive");
  st_case("st_config_wrong_type", [](const fs::path& hf) {
    json c = json::parse(slurp(hf / "config.json"));
    c["hidden_size"] = "64";
    spit(hf / "config.json", c.dump());
  }, "key 'hidden_size' has the wrong type");
  st_case("st_index_traversal", [](const fs::path& hf) {
    spit(hf / "model.safetensors.index.json",
         "{\"weight_map\": {\"model.embed_tokens.weight\": \"../../etc/passwd\"}}");
  }, "is not a plain file name");

  // -- GGUF, through convert gguf-to-lethe --
  const std::string gguf = slurp(src("tests/golden/gguf/llama_tiny.gguf"));
  auto gguf_case = [&](const std::string& name, const std::function<void(std::string&)>& damage,
                       const std::string& expect) {
    const fs::path d = dir_for(name);
    std::string b = gguf;
    damage(b);
    spit(d / "model.gguf", b);
    cases.push_back({"gguf", name, {"convert", "gguf-to-lethe", (d / "model.gguf").string(), (d / "out").string()},
                     expect, {d / "out"}, {d / "model.gguf"}});
  };
  const std::string tname = "token_embd.weight";
  gguf_case("gguf_bad_magic", [](std::string& b) { b[0] = 'X'; }, "bad magic");
  gguf_case("gguf_truncated_header", [](std::string& b) { b.resize(20); }, "truncated or corrupt");
  gguf_case("gguf_truncated_data", [](std::string& b) { b.resize(b.size() - 4096); }, "runs past the end");
  gguf_case("gguf_version", [](std::string& b) { poke<uint32_t>(b, 4, 7); }, "GGUF version 7 is not supported");
  gguf_case("gguf_big_endian", [](std::string& b) { poke<uint32_t>(b, 4, 0x03000000u); }, "big-endian");
  gguf_case("gguf_huge_tensor_count", [](std::string& b) { poke<uint64_t>(b, 8, uint64_t(1) << 60); }, "tensor count");
  gguf_case("gguf_huge_kv_count", [](std::string& b) { poke<uint64_t>(b, 16, ~uint64_t(0)); }, "metadata count");
  gguf_case("gguf_huge_key_length", [](std::string& b) { poke<uint64_t>(b, 24, uint64_t(1) << 62); },
            "runs past the end of the file");
  gguf_case("gguf_dims_overflow", [&](std::string& b) {
    const size_t at = gguf_tensor_info(b, tname);
    poke<uint64_t>(b, at + 4, uint64_t(1) << 40);
    poke<uint64_t>(b, at + 12, uint64_t(1) << 40);
  }, tname);
  gguf_case("gguf_too_many_dims", [&](std::string& b) { poke<uint32_t>(b, gguf_tensor_info(b, tname), 9); }, tname);
  gguf_case("gguf_unknown_type", [&](std::string& b) {
    const size_t at = gguf_tensor_info(b, tname);
    uint32_t nd;
    std::memcpy(&nd, b.data() + at, 4);
    poke<uint32_t>(b, at + 4 + 8 * nd, 99);
  }, "unknown ggml type 99");
  gguf_case("gguf_offset_past_end", [&](std::string& b) {
    const size_t at = gguf_tensor_info(b, tname);
    uint32_t nd;
    std::memcpy(&nd, b.data() + at, 4);
    poke<uint64_t>(b, at + 8 + 8 * nd, uint64_t(1) << 50);
  }, "past the end of the data section");

  // -- run them all --
  std::map<std::string, int> per_format, failed_format;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::map<std::string, std::map<std::string, std::string>> before;
    for (const auto& p : c.unchanged) before[p.string()] = tree(p);
    const fs::path rd = root_ / ("run_" + c.name);
    fs::create_directories(rd);
    const auto t0 = std::chrono::steady_clock::now();
    const RunResult r = run_lethe(c.args, rd, c.env);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bool ok = true;
    auto check = [&](bool cond, const std::string& what) {
      EXPECT_TRUE(cond) << c.name << ": " << what << "\n  stderr: " << r.err << "\n  stdout: " << r.out.substr(0, 400);
      ok = ok && cond;
    };
    check(!r.timed_out, "did not finish within " + std::to_string(kTimeoutS) + " s");
    check(r.signal == 0, "killed by signal " + std::to_string(r.signal));
    check(r.code == 1 || r.code == 2, "exit code " + std::to_string(r.code) + ", expected 1 or 2");
    check(r.err.find(c.expect) != std::string::npos, "stderr lacks '" + c.expect + "'");
    check(r.err.find("internal error") == std::string::npos, "an internal error, not a clear message");
    for (const auto& p : c.must_not_exist) check(!fs::exists(p), "left " + p.string() + " behind");
    for (const auto& p : c.unchanged) check(tree(p) == before[p.string()], p.string() + " was changed");
    per_format[c.format]++;
    if (!ok) failed_format[c.format]++;
    std::printf("%-36s %-11s exit %d%s  %.2fs  %s\n", c.name.c_str(), c.format.c_str(), r.code,
                r.signal ? (" signal " + std::to_string(r.signal)).c_str() : "", secs, ok ? "ok" : "FAILED");
  }
  std::printf("%zu cases:", cases.size());
  for (const auto& [f, n] : per_format) std::printf(" %s %d (%d failed)", f.c_str(), n, failed_format[f]);
  std::printf("\n");
  EXPECT_GE(cases.size(), 40u);
}

}  // namespace
