// Checkpoint directories: round trip, slicing across shards (a tensor written as two
// halves serves any other slice), crash safety of the staging/rename protocol, and every
// corruption rejected with the file named.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/io/checkpoint.h"
#include "engine/io/sha256.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;
using test::randn;

class Ckpt : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lethe_ckpt_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string save(int64_t step, const Tensor& w) {
    CheckpointWriter wr(dir_.string(), checkpoint_name(step));
    wr.add("weights", "w", w);
    wr.add("weights", "b", Tensor::from<int32_t>({2}, {7, 8}));
    wr.manifest()["step"] = step;
    return wr.commit();
  }
  void expect_open_error(const std::string& d, const std::string& needle) {
    try {
      Checkpoint::open(d);
      FAIL() << "expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  fs::path dir_;
};

TEST_F(Ckpt, RoundTripAndLatest) {
  const Tensor w = randn({3, 5}, DType::f32, 1);
  save(1, w);
  const Tensor w2 = randn({3, 5}, DType::f32, 2);
  const std::string d2 = save(2, w2);
  EXPECT_EQ(latest_checkpoint(dir_.string()), d2);
  const Checkpoint c = Checkpoint::open(d2);
  EXPECT_EQ(c.manifest()["step"], 2);
  EXPECT_EQ(test::values(c.read("weights", "w", DType::f32)), test::values(w2));
  EXPECT_EQ(c.read("weights", "b", DType::i32).data<int32_t>()[1], 8);
  EXPECT_EQ(c.names("weights").size(), 2u);
  EXPECT_THROW(c.read("weights", "nope", DType::f32), Error);
  prune_checkpoints(dir_.string(), 1);
  EXPECT_FALSE(fs::exists(dir_ / checkpoint_name(1)));
  EXPECT_TRUE(fs::exists(d2));
}

TEST_F(Ckpt, SlicesAssembleAcrossShards) {
  // A [4, 6] tensor written by two "ranks" as column halves (tp=2 column split) reads back
  // whole, as row halves (another layout) and as an arbitrary box.
  const Tensor full = randn({4, 6}, DType::f64, 3);
  auto col = [&](int64_t c0) {
    Tensor t = Tensor::empty({4, 3}, DType::f64);
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t c = 0; c < 3; ++c) t.data<double>()[r * 3 + c] = full.data<double>()[r * 6 + c0 + c];
    return t;
  };
  {
    CheckpointWriter w0(dir_.string(), "step_00000005", 0);
    w0.add_slice("weights", "w", col(0), {4, 6}, {0, 0});
    CheckpointWriter w1((dir_ / "r1").string(), "step_00000005", 1);
    w1.add_slice("weights", "w", col(3), {4, 6}, {0, 3});
    w1.commit();
    w0.commit();
  }
  // Merge rank 1's shard into rank 0's checkpoint the way a multi-rank save lays it out.
  const fs::path d = dir_ / "step_00000005";
  fs::copy_file(dir_ / "r1" / "step_00000005" / "shard_00001.h5", d / "shard_00001.h5");
  nlohmann::json m = nlohmann::json::parse(std::ifstream(d / "manifest.json"));
  m["shards"].push_back({{"file", "shard_00001.h5"}, {"sha256", to_hex(sha256_file((d / "shard_00001.h5").string()))}});
  const std::string text = m.dump(2) + "\n";
  std::ofstream(d / "manifest.json") << text;
  std::ofstream(d / "COMPLETE") << to_hex(sha256(text.data(), text.size())) << "\n";

  const Checkpoint c = Checkpoint::open(d.string());
  EXPECT_EQ(c.global_shape("weights", "w"), (Shape{4, 6}));
  EXPECT_EQ(test::values(c.read("weights", "w", DType::f64)), test::values(full));
  const Tensor rows = c.read_slice("weights", "w", {2, 0}, {2, 6}, DType::f64);
  EXPECT_EQ(test::values(rows), test::values(full.slice_rows(2, 4)));
  const Tensor box = c.read_slice("weights", "w", {1, 2}, {2, 3}, DType::f32);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t k = 0; k < 3; ++k)
      EXPECT_EQ(box.data<float>()[r * 3 + k], float(full.data<double>()[(1 + r) * 6 + 2 + k]));
  EXPECT_THROW(c.read_slice("weights", "w", {3, 0}, {2, 6}, DType::f32), Error);
}

// A multi-rank save: each rank hashes its own shard when it finishes it, and rank 0's
// commit takes those digests instead of reading every shard again. A shard changed after
// its rank finished it is refused at commit (size) or at load (hash); a rank that never
// finished is named.
TEST_F(Ckpt, EachRankHashesItsOwnShard) {
  const Tensor a = randn({2, 3}, DType::f32, 4), b = randn({2, 3}, DType::f32, 5);
  {
    CheckpointWriter w0(dir_.string(), "step_00000001", 0, true, 2, "t1");
    CheckpointWriter w1(dir_.string(), "step_00000001", 1, true, 2, "t1");
    w0.add_slice("weights", "w", a, {4, 3}, {0, 0});
    w1.add_slice("weights", "w", b, {4, 3}, {2, 0});
    w1.finish_shard();
    EXPECT_TRUE(fs::exists(dir_ / ".step_00000001.partial-t1" / "shard_00001.h5.sha256"));
    w0.commit();
  }
  const Checkpoint c = Checkpoint::open((dir_ / "step_00000001").string());
  const Tensor whole = c.read("weights", "w", DType::f32);
  EXPECT_EQ(test::values(whole.slice_rows(2, 4)), test::values(b));
  for (const auto& e : fs::directory_iterator(dir_ / "step_00000001"))
    EXPECT_NE(e.path().extension(), ".sha256") << "digests are not left in the checkpoint";

  {  // rank 1 never finished its shard
    CheckpointWriter w0(dir_.string(), "step_00000002", 0, true, 2, "t2");
    CheckpointWriter w1(dir_.string(), "step_00000002", 1, true, 2, "t2");
    w0.add("weights", "w", a);
    try {
      w0.commit();
      FAIL() << "committed without rank 1's digest";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1 has not finished its shard"), std::string::npos) << e.what();
    }
  }
  {  // rank 1's shard grew after it was hashed
    CheckpointWriter w0(dir_.string(), "step_00000003", 0, true, 2, "t3");
    CheckpointWriter w1(dir_.string(), "step_00000003", 1, true, 2, "t3");
    w0.add("weights", "w", a);
    w1.finish_shard();
    std::ofstream(dir_ / ".step_00000003.partial-t3" / "shard_00001.h5", std::ios::app) << "x";
    try {
      w0.commit();
      FAIL() << "committed a shard changed after its digest";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("changed after rank 1 finished it"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(latest_checkpoint(dir_.string()), (dir_ / "step_00000001").string());
}

TEST_F(Ckpt, InterruptedSaveLeavesPreviousCheckpoint) {
  const Tensor w = randn({3, 5}, DType::f32, 1);
  const std::string d1 = save(1, w);
  {
    CheckpointWriter wr(dir_.string(), checkpoint_name(2));
    wr.add("weights", "w", randn({3, 5}, DType::f32, 9));
    // destroyed without commit: a crash before the rename
  }
  EXPECT_EQ(latest_checkpoint(dir_.string()), d1);
  // A step directory without its marker (a crash inside the protocol) is skipped.
  fs::create_directories(dir_ / checkpoint_name(3));
  EXPECT_EQ(latest_checkpoint(dir_.string()), d1);
  expect_open_error((dir_ / checkpoint_name(3)).string(), "no COMPLETE marker");
  EXPECT_EQ(test::values(Checkpoint::open(d1).read("weights", "w", DType::f32)), test::values(w));
}

TEST_F(Ckpt, ResavingAStepReplacesIt) {
  save(4, randn({3, 5}, DType::f32, 1));
  const Tensor w = randn({3, 5}, DType::f32, 2);
  const std::string d = save(4, w);
  EXPECT_EQ(test::values(Checkpoint::open(d).read("weights", "w", DType::f32)), test::values(w));
}

TEST_F(Ckpt, CorruptionIsDetected) {
  const std::string d = save(1, randn({64, 64}, DType::f32, 1));
  const fs::path shard = fs::path(d) / "shard_00000.h5";
  {  // flip one byte in the middle of the shard
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(fs::file_size(shard) / 2));
    char c;
    f.read(&c, 1);
    f.seekp(std::streamoff(fs::file_size(shard) / 2));
    c = char(c ^ 0x5a);
    f.write(&c, 1);
  }
  expect_open_error(d, "checksum mismatch");
  fs::remove(shard);
  expect_open_error(d, "shard listed in the manifest is missing");
  std::ofstream(fs::path(d) / "manifest.json", std::ios::app) << " ";
  expect_open_error(d, "does not match the hash in its COMPLETE marker");
}

TEST_F(Ckpt, ExtraFilesAreChecksummed) {
  std::string d;
  {
    CheckpointWriter w(dir_.string(), checkpoint_name(1));
    w.add("weights", "w", randn({2, 2}, DType::f32, 1));
    w.add_file("tokenizer.json", "{\"tokens\": [\"a\"]}\n");
    EXPECT_THROW(w.add_file("../escape.json", "x"), Error);
    EXPECT_THROW(w.add_file("manifest.json", "x"), Error);
    d = w.commit();
  }
  const Checkpoint c = Checkpoint::open(d);
  EXPECT_TRUE(c.has_file("tokenizer.json"));
  EXPECT_EQ(c.read_file("tokenizer.json"), "{\"tokens\": [\"a\"]}\n");
  EXPECT_THROW(c.read_file("other.json"), Error);
  std::ofstream(fs::path(d) / "tokenizer.json") << "{\"tokens\": [\"b\"]}\n";
  expect_open_error(d, "checksum mismatch");
}

TEST_F(Ckpt, ManifestCannotPointOutside) {
  const std::string d = save(1, randn({2, 2}, DType::f32, 1));
  nlohmann::json m = nlohmann::json::parse(std::ifstream(fs::path(d) / "manifest.json"));
  m["shards"][0]["file"] = "../../etc/passwd";
  const std::string text = m.dump(2) + "\n";
  std::ofstream(fs::path(d) / "manifest.json") << text;
  std::ofstream(fs::path(d) / "COMPLETE") << to_hex(sha256(text.data(), text.size())) << "\n";
  expect_open_error(d, "is not a plain file name");
}

}  // namespace
}  // namespace lethe
