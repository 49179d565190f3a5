// Every shipped method (configs/recipes/*.yaml) forgets: a short run of the recipe as
// shipped (its terms, weights, optimizer and learning rate) from the embedded benchmark's
// model, tiny-lm-full, raises the forget NLL by at least a quarter of the distance that
// separates it from the holdout NLL before the run, and every evaluated NLL stays finite.
// That distance is the run's own: how much better than unseen text of the same domain the
// model knows the forget documents is exactly what unlearning has to remove.
//
// To keep the file short on one thread each run reads the first documents of every split
// it uses (kDocs documents of at most kDocTokens tokens; the recipe's own files, so the
// general variants read their other-domain data), runs kSteps steps at batch size kBatch,
// and leaves out the oracle, verbatim and multiple-choice evaluations.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <iostream>
#include <sstream>
#include <unistd.h>

#include "engine/data/token_dataset.h"
#include "engine/unlearn/recipe.h"
#include "engine/unlearn/unlearner.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

constexpr int64_t kDocs = 4, kDocTokens = 1024, kSteps = 10, kBatch = 4;
// The share of the forget-to-holdout NLL distance a short run must remove.
constexpr double kShareOfGap = 0.25;

const fs::path kRecipes = fs::path(LETHE_SOURCE_DIR) / "configs" / "recipes";

std::vector<std::string> shipped() {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(kRecipes))
    if (e.path().extension() == ".yaml") v.push_back(e.path().stem().string());
  std::sort(v.begin(), v.end());
  return v;
}

class Methods : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("lethe_methods_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    made_.clear();
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // The first kDocs documents of a token file, each cut to kDocTokens tokens (written once
  // per source file).
  static std::string head_of(const std::string& path) {
    if (path.empty()) return path;
    if (made_.count(path)) return made_.at(path);
    const TokenDataset all = load_token_dataset(path, 0);
    TokenDataset part = all;
    part.tokens.clear();
    part.offsets = {0};
    part.doc_sha256.clear();
    for (int64_t d = 0; d < std::min(kDocs, all.n_docs()); ++d) {
      const int64_t b = all.offsets[size_t(d)], n = std::min(kDocTokens, all.doc_length(d));
      part.tokens.insert(part.tokens.end(), all.tokens.begin() + b, all.tokens.begin() + b + n);
      part.offsets.push_back(int64_t(part.tokens.size()));
      if (size_t(d) < all.doc_sha256.size()) part.doc_sha256.push_back(all.doc_sha256[size_t(d)]);
    }
    const std::string out = (dir_ / (std::to_string(made_.size()) + ".h5")).string();
    save_token_dataset(out, part);
    return made_[path] = out;
  }
  static fs::path dir_;
  static std::map<std::string, std::string> made_;  // source file -> its head
};
fs::path Methods::dir_;
std::map<std::string, std::string> Methods::made_;

double nll(const EvalPoint& e, const char* s) { return e.splits.at(s).nll; }

TEST_P(Methods, ShortRunRaisesForgetNll) {
  const std::string name = GetParam();
  const fs::path out = dir_ / ("out_" + name);
  Recipe r = load_recipe((kRecipes / (name + ".yaml")).string(),
                         {"train.steps=" + std::to_string(kSteps), "train.batch_size=" + std::to_string(kBatch),
                          "eval.every=0", "eval.max_sequences=0", "eval.mia_max_docs=2", "eval.verbatim_prefix=0",
                          "eval.verbatim_continuation=0", "output.dir=" + out.string()});
  r.oracle.clear();
  r.mc_task.clear();
  for (std::string* p : {&r.forget, &r.retain, &r.holdout, &r.general}) *p = head_of(*p);
  const auto t0 = std::chrono::steady_clock::now();
  std::ostringstream log;
  const UnlearnResult res = run_unlearn(r, log);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const EvalPoint &before = res.evals.front(), &after = res.evals.back();
  // The benchmark's premise: the model knows its forget documents better than unseen ones.
  const double gap = nll(before, "holdout") - nll(before, "forget");
  ASSERT_GT(gap, 0) << log.str();
  EXPECT_EQ(res.steps_run, kSteps) << log.str();
  for (const auto& [split, m] : after.splits) EXPECT_TRUE(std::isfinite(m.nll)) << split << "\n" << log.str();
  EXPECT_GT(nll(after, "forget"), nll(before, "forget") + kShareOfGap * gap)
      << name << ": forget NLL " << nll(before, "forget") << " -> " << nll(after, "forget") << ", holdout "
      << nll(before, "holdout") << " -> " << nll(after, "holdout") << "\n"
      << log.str();
  std::cout << name << ": forget NLL " << nll(before, "forget") << " -> " << nll(after, "forget") << " (needed > "
            << nll(before, "forget") + kShareOfGap * gap << "), holdout " << nll(before, "holdout") << " -> "
            << nll(after, "holdout") << ", retain " << (before.splits.count("retain") ? nll(before, "retain") : NAN)
            << " -> " << (after.splits.count("retain") ? nll(after, "retain") : NAN) << ", " << secs << " s\n";
}

INSTANTIATE_TEST_SUITE_P(Shipped, Methods, ::testing::ValuesIn(shipped()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// A recipe added to configs/recipes is picked up by the suite above; this pins that the
// directory was found and holds the methods the docs list.
TEST(MethodsList, EveryDocumentedMethodShips) {
  const std::vector<std::string> v = shipped();
  for (const char* m : {"ga", "ga_gd", "ga_gd_general", "ga_kl", "ga_kl_general", "random_labels", "adversarial", "npo",
                        "simnpo", "rmu", "wga", "undial", "flood"})
    EXPECT_NE(std::find(v.begin(), v.end(), m), v.end()) << m;
}

// The methods' keys are validated like every other: a key of another term type, a value
// out of range or a missing required key is an error naming the file and the key.
TEST(MethodsList, BadMethodKeysAreErrorsNamingFileAndKey) {
  const fs::path p = fs::temp_directory_path() / ("lethe_method_keys_" + std::to_string(::getpid()) + ".yaml");
  auto expect_error = [&](const std::string& term, const std::string& needle) {
    std::ofstream(p) << "method: m\nmodel: " << LETHE_SOURCE_DIR << "/data/models/tiny-lm-full\n"
                     << "data: {forget: f.h5, holdout: h.h5, retain: r.h5}\n"
                     << "terms:\n  f: " << term << "\n  r: {type: nll, stream: retain, weight: 1}\n"
                     << "output: {dir: out}\n";
    try {
      load_recipe(p.string(), {});
      ADD_FAILURE() << term << ": expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(needle), std::string::npos) << what;
      EXPECT_NE(what.find(p.string()), std::string::npos) << what;
    }
  };
  expect_error("{type: nll, stream: forget, weight: -1, top_k: 5}", "terms.f.top_k");
  expect_error("{type: npo, stream: forget, gamma: 2}", "terms.f.gamma");
  expect_error("{type: random_labels, stream: forget, top_p: 1.5}", "terms.f.top_p");
  expect_error("{type: random_labels, stream: forget, top_k: -2}", "terms.f.top_k");
  expect_error("{type: random_labels, stream: forget, label_source: model}", "terms.f.label_source");
  expect_error("{type: random_labels, stream: forget, label_source: uniform, top_k: 5}", "terms.f.top_k");
  expect_error("{type: wga, stream: forget, weight: -1, alpha: 0}", "terms.f.alpha");
  expect_error("{type: undial, stream: forget, gamma: -1}", "terms.f.gamma");
  expect_error("{type: flood, stream: forget}", "terms.f.flood");
  expect_error("{type: flood, stream: forget, flood: -0.5}", "terms.f.flood");
  expect_error("{type: rmu_forget, stream: forget, layer: 1, steering: auto}", "terms.f.steering");
  expect_error("{type: rmu_forget, stream: forget, layer: 1, steering: adaptive}", "terms.f.beta");
  expect_error("{type: rmu_forget, stream: forget, layer: 1, steering: adaptive, beta: 2, steer: 6.5}",
               "terms.f.steer");
  expect_error("{type: rmu_retain, stream: forget, steering: adaptive}", "terms.f.steering");
  fs::remove(p);
}

}  // namespace
}  // namespace lethe
