// `lethe train` under a grid, and checkpoints that change layout. The one-process losses
// come from the Reference test (a plain process, a ctest fixture); the others run under
// mpirun and compare with them within 1e-5 relative:
//   Tp2Dp2       6 steps at tp=2 x dp=2 (ZeRO-1), saving at step 3; also without ZeRO-1
//                and with 2 micro-batches per step
//   ResumeTp4    the step-3 checkpoint continued at tp=4, and at tp=1 x dp=4
//   ResumeOne    the step-3 checkpoint continued by one process (tp=1)
//   Bf16Layouts  train.precision=bf16 at tp=2 x dp=2 (ZeRO-1, saving at step 3), at tp=4, and
//                the step-3 checkpoint (its fp32 master shards) continued at dp=4, against
//                the one-process bf16 run (tolerance below)
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/cli/commands.h"
#include "engine/io/checkpoint.h"
#include "par_test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

const std::string kConfig = std::string(LETHE_SOURCE_DIR) + "/configs/train/demo.yaml";
// Under the test's working directory (the build tree); checkpoint.dir must be absolute,
// since a relative one is taken relative to the config file.
const std::string kRefFile = fs::absolute("par_train_reference.json").string();
const std::string kCkpt = fs::absolute("par_train_ckpt").string();
const std::string kRefBf16File = fs::absolute("par_train_reference_bf16.json").string();

std::vector<std::string> args(std::vector<std::string> extra) {
  std::vector<std::string> a{"train.steps=6", "train.batch_size=4", "train.seq_len=32", "train.log_every=1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::vector<double> reference(const std::string& file = kRefFile) {
  std::ifstream in(file);
  if (!in.good()) return {};
  return nlohmann::json::parse(in).get<std::vector<double>>();
}

void expect_losses(const std::vector<double>& got, const std::vector<double>& want, size_t first) {
  ASSERT_LE(got.size() + first, want.size());
  ASSERT_FALSE(got.empty());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[first + i], 1e-5 * std::abs(want[first + i])) << "step " << first + i + 1;
}

// Copies the step-3 checkpoint (written by Tp2Dp2) into a fresh run directory.
std::string copy_checkpoint(const std::string& name) {
  auto& w = *test::mpi_world_shared();
  const std::string to = fs::absolute(name).string();
  if (w.rank() == 0) {
    fs::remove_all(to);
    fs::copy(kCkpt, to, fs::copy_options::recursive);
  }
  w.barrier();
  return to;
}

TEST(ParallelTrain, Reference) {
  std::ostringstream out;
  const auto s = cli::run_train(kConfig, args({}), out);
  ASSERT_EQ(s.losses.size(), 6u);
  std::ofstream(kRefFile) << nlohmann::json(s.losses).dump();
  const auto b = cli::run_train(kConfig, args({"train.precision=bf16"}), out);
  ASSERT_EQ(b.losses.size(), 6u);
  std::ofstream(kRefBf16File) << nlohmann::json(b.losses).dump();
}

TEST(ParallelTrain, Tp2Dp2) {
  auto& w = *test::mpi_world_shared();
  ASSERT_EQ(w.size(), 4);
  const auto ref = reference();
  ASSERT_EQ(ref.size(), 6u) << "run the Reference test first (ctest fixture)";
  if (w.rank() == 0) fs::remove_all(kCkpt);
  w.barrier();
  std::ostringstream out;
  const auto s = cli::run_train(kConfig, args({"parallel.tp=2", "parallel.dp=2", "train.run_steps=3",
                                               "checkpoint.dir=" + kCkpt}),
                                out);
  expect_losses(s.losses, ref, 0);
  const auto no_zero = cli::run_train(kConfig, args({"parallel.tp=2", "parallel.dp=2", "parallel.zero1=false"}), out);
  expect_losses(no_zero.losses, ref, 0);
  // The tiny model fits one default bucket (40M elements): small buckets make the
  // reduce-scatters and all-reduces start during the backward, several per step.
  for (const char* zero1 : {"true", "false"}) {
    const auto small = cli::run_train(
        kConfig, args({"parallel.tp=2", "parallel.dp=2", "parallel.bucket_elements=5000", std::string("parallel.zero1=") + zero1}),
        out);
    expect_losses(small.losses, ref, 0);
  }
  const auto accum = cli::run_train(kConfig, args({"parallel.tp=2", "parallel.dp=2", "train.grad_accum=2"}), out);
  expect_losses(accum.losses, ref, 0);
  if (w.rank() == 0) {
    const Checkpoint ck = Checkpoint::open(kCkpt + "/step_00000003");
    EXPECT_EQ(ck.manifest()["parallel"]["tp"], 2);
    EXPECT_EQ(ck.manifest()["shards"].size(), 4u);  // one per rank
  }
}

TEST(ParallelTrain, ResumeTp4) {
  const auto ref = reference();
  ASSERT_EQ(ref.size(), 6u);
  std::ostringstream out;
  const auto tp4 = cli::run_train(
      kConfig, args({"parallel.tp=4", "train.resume=true", "checkpoint.dir=" + copy_checkpoint("par_train_tp4")}), out);
  expect_losses(tp4.losses, ref, 3);
  const auto dp4 = cli::run_train(
      kConfig, args({"parallel.dp=4", "train.resume=true", "checkpoint.dir=" + copy_checkpoint("par_train_dp4")}), out);
  expect_losses(dp4.losses, ref, 3);
}

TEST(ParallelTrain, ResumeOne) {
  const auto ref = reference();
  ASSERT_EQ(ref.size(), 6u);
  std::ostringstream out;
  const auto one =
      cli::run_train(kConfig, args({"train.resume=true", "checkpoint.dir=" + copy_checkpoint("par_train_tp1")}), out);
  expect_losses(one.losses, ref, 3);
}

// Another layout sums the same f32 products in another order, so a few values land on the
// other side of a bf16 rounding boundary: the grid run draws the bf16 rounding errors
// anew. Both runs are then about as far from the exact loss as the one-process bf16 run
// is from the f32 run (whose own error is 2^16 times smaller), and from each other at
// most about sqrt(2) times that. The tolerance at step s is twice the largest bf16-f32
// gap of steps 1..s (the running maximum, so that a step where the gap happens to cancel
// does not set it), plus the f32 tests' 1e-5 relative.
void expect_bf16_losses(const std::vector<double>& got, size_t first) {
  const auto b = reference(kRefBf16File), f = reference();
  ASSERT_EQ(b.size(), 6u);
  ASSERT_LE(got.size() + first, b.size());
  ASSERT_FALSE(got.empty());
  double gap = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    gap = std::max(gap, std::abs(b[i] - f[i]));
    if (i < first || i >= first + got.size()) continue;
    EXPECT_NEAR(got[i - first], b[i], 2 * gap + 1e-5 * std::abs(b[i])) << "step " << i + 1;
  }
  EXPECT_GT(gap, 0) << "the bf16 reference equals the f32 one: the rounding is off";
}

TEST(ParallelTrain, Bf16Layouts) {
  auto& w = *test::mpi_world_shared();
  ASSERT_EQ(w.size(), 4);
  const std::string ckpt = fs::absolute("par_train_bf16_ckpt").string();
  if (w.rank() == 0) fs::remove_all(ckpt);
  w.barrier();
  std::ostringstream out;
  const auto s = cli::run_train(kConfig, args({"train.precision=bf16", "parallel.tp=2", "parallel.dp=2",
                                               "train.run_steps=3", "checkpoint.dir=" + ckpt}),
                                out);
  expect_bf16_losses(s.losses, 0);
  const auto tp4 = cli::run_train(kConfig, args({"train.precision=bf16", "parallel.tp=4"}), out);
  expect_bf16_losses(tp4.losses, 0);
  // In the same layout the resumed run is the uninterrupted one, bit for bit: the fp32
  // master shards came back (from the rounded weights alone, steps 5 and 6 would differ).
  const auto whole = cli::run_train(kConfig, args({"train.precision=bf16", "parallel.tp=2", "parallel.dp=2"}), out);
  const std::string again = fs::absolute("par_train_bf16_again").string();
  if (w.rank() == 0) {
    fs::remove_all(again);
    fs::copy(ckpt, again, fs::copy_options::recursive);
  }
  w.barrier();
  const auto resumed = cli::run_train(kConfig, args({"train.precision=bf16", "parallel.tp=2", "parallel.dp=2",
                                                     "train.resume=true", "checkpoint.dir=" + again}),
                                      out);
  ASSERT_EQ(whole.losses.size(), 6u);
  ASSERT_EQ(resumed.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed.losses[i], whole.losses[3 + i]) << "step " << 4 + i;
  // Into another layout: ZeRO-1 shards over 4 dp ranks read the tp2 x dp2 master.
  const auto dp4 = cli::run_train(
      kConfig, args({"train.precision=bf16", "parallel.dp=4", "train.resume=true", "checkpoint.dir=" + ckpt}), out);
  expect_bf16_losses(dp4.losses, 3);
  if (w.rank() == 0) {
    const Checkpoint ck = Checkpoint::open(ckpt + "/step_00000003");
    EXPECT_EQ(ck.manifest()["precision"], "bf16");
    EXPECT_FALSE(ck.names("optim_master").empty());
  }
}

// train.device=cuda served by the host-staged device (LETHE_TEST_HOST_STAGED_DEVICE=1) at
// dp=4 with ZeRO-1 and without, and at tp=2 x dp=2: the device path's gradient reduction
// (bucketed, started from the backward), sharded fp32 master and moments, the all-gather
// of the updated weights, and under tp the vocabulary-parallel embedding and loss and the
// f32 tensor-parallel sums go through the host-staged communicator, and must give the CPU
// emulation's run at the same layout bit for bit: every loss, and every group of the final
// checkpoint. tp=4 does not divide the model's two key/value heads: refused on a device.
TEST(ParallelTrain, DeviceLayouts) {
  auto& w = *test::mpi_world_shared();
  ASSERT_EQ(w.size(), 4);
  auto group_bytes = [](const std::string& ck, const std::string& group) {
    const Checkpoint c = Checkpoint::open(ck);
    std::string all;
    for (const auto& n : c.names(group)) {
      const Tensor t = c.read(group, n, DType::f32);
      all.append(static_cast<const char*>(t.raw()), t.nbytes());
    }
    return all;
  };
  const std::vector<std::pair<std::string, std::vector<std::string>>> layouts{
      {"zero1", {"parallel.dp=4", "parallel.zero1=true"}},
      {"allreduce", {"parallel.dp=4", "parallel.zero1=false"}},
      {"tp2dp2", {"parallel.tp=2", "parallel.dp=2", "parallel.zero1=true"}}};
  for (const auto& [tag, layout] : layouts) {
    const std::string cpu_ck = fs::absolute("par_train_dev_cpu_" + tag).string();
    const std::string dev_ck = fs::absolute("par_train_dev_" + tag).string();
    if (w.rank() == 0) {
      fs::remove_all(cpu_ck);
      fs::remove_all(dev_ck);
    }
    w.barrier();
    std::ostringstream out;
    std::vector<std::string> a = layout;
    a.insert(a.end(), {"train.precision=bf16", "checkpoint.dir=" + cpu_ck});
    const auto cpu = cli::run_train(kConfig, args(a), out);
    ::setenv("LETHE_TEST_HOST_STAGED_DEVICE", "1", 1);
    a = layout;
    a.insert(a.end(), {"train.device=cuda", "checkpoint.dir=" + dev_ck});
    std::ostringstream dev_out;
    const auto dev = cli::run_train(kConfig, args(a), dev_out);
    ::unsetenv("LETHE_TEST_HOST_STAGED_DEVICE");
    if (w.rank() == 0) {
      EXPECT_NE(dev_out.str().find("device: cuda (the host-staged test device"), std::string::npos) << dev_out.str();
    }
    ASSERT_EQ(cpu.losses.size(), 6u);
    ASSERT_EQ(dev.losses.size(), 6u);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(dev.losses[i], cpu.losses[i]) << tag << " step " << i + 1;
    if (w.rank() == 0) {
      for (const char* group : {"weights", "optim_master", "optim_m", "optim_v"})
        EXPECT_EQ(group_bytes(dev_ck + "/step_00000006", group), group_bytes(cpu_ck + "/step_00000006", group))
            << tag << " " << group;
    }
    w.barrier();
  }
  ::setenv("LETHE_TEST_HOST_STAGED_DEVICE", "1", 1);
  std::ostringstream out;
  try {
    cli::run_train(kConfig, args({"parallel.tp=4", "train.device=cuda"}), out);
    ADD_FAILURE() << "tp=4 on a device with two key/value heads was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not divide the model's 2 key/value heads"), std::string::npos)
        << e.what();
  }
  ::unsetenv("LETHE_TEST_HOST_STAGED_DEVICE");
}

TEST(ParallelTrain, LayoutErrorsAreClear) {
  std::ostringstream out;
  auto expect_error = [&](std::vector<std::string> extra, const std::string& needle) {
    try {
      cli::run_train(kConfig, args(extra), out);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({"parallel.tp=3"}, "n_heads % tp == 0");
  expect_error({"parallel.dp=3"}, "must be a multiple of parallel.dp");
  expect_error({"parallel.tp=0"}, "parallel.tp");
  expect_error({"parallel.pp=2"}, "pp");
}

}  // namespace
}  // namespace lethe
