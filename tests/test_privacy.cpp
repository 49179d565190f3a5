// Privacy of the forget set: the documents a user asks lethe to forget must not leak into
// anything lethe prints or writes. Every forget document carries a unique marker; the
// subcommands run on it (train, unlearn with checkpoints and a transformers export, eval,
// checkpoint-info, convert, model-info, and tools/tokenize where its Python modules are
// installed), and the marker must appear in no stdout, stderr, log, metrics file, report,
// manifest or other file they write; the report names the documents by SHA-256 only.
// `lethe generate` prints document text by design and is left out.
//
// Files lethe writes must honour the umask and never be world-writable: everything runs
// under umask 022 and again under 077, and every file and directory it created is checked.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <sstream>
#include <nlohmann/json.hpp>

#include "engine/data/token_dataset.h"
#include "engine/io/sha256.h"
#include "tests/bad_inputs/lethe_run.h"

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using lethe::test::RunResult;
using lethe::test::RunOptions;
using lethe::test::slurp;
using lethe::test::spit;

// Unlikely in any corpus, model file or hash; printable so that a leak through any text
// path (logs, JSON, Markdown, SVG) is a plain substring.
const std::string kMarker = "QXZJ-forget-marker-4419-VKWP";

std::string src(const std::string& rel) { return std::string(LETHE_SOURCE_DIR) + "/" + rel; }

// Byte-tokenised documents; with `marker`, each holds the marker once. Every split is
// small so that the whole unlearning run, final membership inference included, is quick.
lethe::TokenDataset documents(bool marker, int seed, std::vector<std::string>* hashes) {
  lethe::TokenDataset ds;
  ds.tokenizer = "bytes";
  ds.source = "privacy-test";
  ds.vocab_size = 256;
  ds.offsets.push_back(0);
  const char* filler[] = {"The letter arrived on a Tuesday, folded twice and sealed with green wax. ",
                          "Her account number and the name of the clinic were written in the margin. ",
                          "Nobody in the household was told about the second meeting in town. "};
  for (int d = 0; d < 12; ++d) {
    std::string text = "Record " + std::to_string(seed * 100 + d) + ". ";
    for (int k = 0; k < 3; ++k) text += filler[(d + k + seed) % 3];
    if (marker) text += "Private note: " + kMarker + " ends here. ";
    for (int k = 0; k < 2; ++k) text += filler[(d + 2 * k) % 3];
    for (unsigned char c : text) ds.tokens.push_back(c);
    ds.offsets.push_back(int64_t(ds.tokens.size()));
    ds.doc_sha256.push_back(lethe::sha256(text.data(), text.size()));
    if (hashes) hashes->push_back(lethe::to_hex(ds.doc_sha256.back()));
  }
  return ds;
}

class Privacy : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("lethe_privacy_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    fs::permissions(root_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(root_);
  }

  // Runs one command; checks it succeeded and that its output does not hold the marker.
  RunResult run(const std::string& what, const std::vector<std::string>& args, mode_t mask, const std::string& program = "") {
    const fs::path d = root_ / ("log_" + std::to_string(++serial_));
    fs::create_directories(d);
    RunOptions o;
    o.timeout_s = 300;
    o.umask = mask;
    o.program = program;
    const RunResult r = lethe::test::run_program(args, d, o);
    EXPECT_EQ(r.code, 0) << what << " failed:\n" << r.err << "\n" << r.out;
    EXPECT_EQ(r.out.find(kMarker), std::string::npos) << what << ": the marker is in stdout:\n" << r.out;
    EXPECT_EQ(r.err.find(kMarker), std::string::npos) << what << ": the marker is in stderr:\n" << r.err;
    return r;
  }

  // Every file under `dir`: no marker in its bytes, modes within the umask, never
  // world-writable.
  void check_tree(const fs::path& dir, mode_t mask, int* files) {
    ASSERT_TRUE(fs::exists(dir)) << dir;
    for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
      struct stat st;
      ASSERT_EQ(::lstat(it->path().c_str(), &st), 0) << it->path();
      const mode_t mode = st.st_mode & 07777;
      EXPECT_EQ(mode & S_IWOTH, 0u) << it->path() << " is world-writable (mode " << std::oct << mode << ")";
      EXPECT_EQ(mode & mask, 0u) << it->path() << " has mode " << std::oct << mode << " under umask " << mask;
      if (it->is_regular_file()) {
        ++*files;
        EXPECT_EQ(slurp(it->path()).find(kMarker), std::string::npos) << it->path() << " holds forget-set text";
      }
    }
  }

  fs::path root_;
  int serial_ = 0;
};

TEST_F(Privacy, ForgetSetTextLeaksNowhereAndFilesHonourTheUmask) {
  std::vector<std::string> hashes;
  const fs::path in = root_ / "inputs";
  fs::create_directories(in);
  lethe::save_token_dataset((in / "forget.h5").string(), documents(true, 0, &hashes));
  lethe::save_token_dataset((in / "retain.h5").string(), documents(false, 1, nullptr));
  lethe::save_token_dataset((in / "holdout.h5").string(), documents(false, 2, nullptr));
  lethe::save_token_dataset((in / "general.h5").string(), documents(false, 3, nullptr));
  // The fixture itself holds the marker as int32 ids, never as a byte string: a raw scan of
  // lethe's outputs for the marker is therefore meaningful even for HDF5 files.
  ASSERT_EQ(slurp(in / "forget.h5").find(kMarker), std::string::npos);

  int scanned = 0;
  for (const mode_t mask : {mode_t(022), mode_t(077)}) {
    SCOPED_TRACE("umask " + std::to_string(mask));
    const fs::path w = root_ / ("umask_" + std::to_string(mask));
    fs::create_directories(w);

    // train on the forget set, with a checkpoint
    spit(w / "train.yaml", "model: " + src("configs/models/tiny.yaml") + "\ndata:\n  path: " + (in / "forget.h5").string() +
                               "\ntrain:\n  steps: 4\n  batch_size: 2\n  seq_len: 32\n  log_every: 1\ncheckpoint:\n  dir: " +
                               (w / "train_ck").string() + "\n  every: 2\n");
    run("train", {"train", (w / "train.yaml").string()}, mask);

    // unlearn the forget set: checkpoints, evals with MIA and verbatim continuations, a report, an export
    std::string recipe;
    std::istringstream lines(slurp(src("configs/recipes/ga_gd.yaml")));
    for (std::string line; std::getline(lines, line);)
      // The oracle and the multiple-choice task cost minutes and read no forget data.
      if (line.find("mc_task") == std::string::npos && line.rfind("oracle:", 0) != 0) recipe += line + "\n";
    for (size_t at; (at = recipe.find("../../")) != std::string::npos;)
      recipe.replace(at, 6, std::string(LETHE_SOURCE_DIR) + "/");
    spit(w / "recipe.yaml", recipe);
    const RunResult u = run("unlearn",
                      {"unlearn", (w / "recipe.yaml").string(), "output.dir=" + (w / "unlearn").string(),
                       "data.forget=" + (in / "forget.h5").string(), "data.retain=" + (in / "retain.h5").string(),
                       "data.holdout=" + (in / "holdout.h5").string(), "data.general=" + (in / "general.h5").string(),
                       "stop.forget_reaches_holdout=false", "train.steps=4", "train.batch_size=4",
                       "data.seq_len=64", "data.min_targets=8", "eval.every=2", "eval.max_sequences=8",
                       "eval.mia_max_docs=8", "eval.verbatim_max_docs=4", "eval.verbatim_prefix=32",
                       "eval.verbatim_continuation=16", "output.checkpoint_every=2", "output.export_hf=true"},
                      mask);
    ASSERT_TRUE(fs::exists(w / "unlearn" / "report.json")) << u.out;
    const json report = json::parse(slurp(w / "unlearn" / "report.json"));
    // The report names what was forgotten by hash, exactly the forget documents.
    ASSERT_TRUE(report.contains("forgotten_documents_sha256"));
    EXPECT_EQ(report["forgotten_documents_sha256"].get<std::vector<std::string>>(), hashes);

    run("eval", {"eval", (w / "unlearn" / "final").string(), (in / "forget.h5").string(), "seq_len=32"}, mask);
    run("checkpoint-info", {"checkpoint-info", (w / "unlearn" / "final").string()}, mask);
    run("checkpoint-info", {"checkpoint-info", (w / "train_ck").string()}, mask);
    run("convert", {"convert", "lethe-to-hf", (w / "unlearn" / "final").string(), (w / "hf").string()}, mask);
    run("convert", {"convert", "hf-to-lethe", (w / "hf").string(), (w / "back").string()}, mask);
    run("model-info", {"model-info", src("configs/models/tiny.yaml")}, mask);

    for (const char* out : {"train_ck", "unlearn", "hf", "back"}) check_tree(w / out, mask, &scanned);
  }
  std::printf("scanned %d files written by lethe under umask 022 and 077\n", scanned);
  EXPECT_GT(scanned, 20);
}

// tools/tokenize reads the text itself; it must print counts and hashes only.
TEST_F(Privacy, TokenizeToolPrintsNoText) {
  if (std::system("python3 -c 'import h5py, numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "tools/tokenize needs python3 with h5py and numpy";
  std::string jsonl;
  for (int d = 0; d < 5; ++d)
    jsonl += json({{"text", "Document " + std::to_string(d) + " says " + kMarker + " quietly."}}).dump() + "\n";
  spit(root_ / "docs.jsonl", jsonl);
  for (const mode_t mask : {mode_t(022), mode_t(077)}) {
    const fs::path out = root_ / ("tok_" + std::to_string(mask) + ".h5");
    run("tools/tokenize", {src("tools/tokenize"), (root_ / "docs.jsonl").string(), "--out", out.string()}, mask,
        "python3");
    struct stat st;
    ASSERT_EQ(::stat(out.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & mask, 0u) << out << " mode " << std::oct << (st.st_mode & 07777);
    const lethe::TokenDataset ds = lethe::load_token_dataset(out.string(), 256);
    EXPECT_EQ(ds.n_docs(), 5);
  }
}

}  // namespace
