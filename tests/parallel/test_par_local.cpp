// The one-process path: no MPI, local collectives are identities, the launcher is seen
// from the environment only.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "engine/parallel/grid.h"
#include "engine/parallel/launcher_env.h"
#include "kernels/host_staged_device.h"

namespace lethe {
namespace {

TEST(LocalComm, CollectivesAreIdentities) {
  auto c = make_local_communicator();
  EXPECT_EQ(c->size(), 1);
  Tensor x = Tensor::from<float>({2}, {1.5f, -2.0f});
  c->all_reduce(x, ReduceOp::sum);
  EXPECT_EQ(x.data<float>()[0], 1.5f);
  Tensor out = Tensor::zeros({2}, DType::f32);
  c->all_gather(x, out);
  EXPECT_EQ(out.data<float>()[1], -2.0f);
  c->reduce_scatter(x, out);
  EXPECT_EQ(out.data<float>()[0], 1.5f);
  EXPECT_EQ(c->all_reduce(3.25, ReduceOp::max), 3.25);
  Tensor wrong = Tensor::zeros({3}, DType::f32);
  EXPECT_THROW(c->all_gather(x, wrong), Error);
}

// One collective moves host or device memory, never both: a device input with a host
// output would hand a device pointer to MPI or memcpy.
TEST(LocalComm, MixedDevicesAreRefusedByName) {
  ScopedHostStagedDevice device;
  auto c = make_local_communicator();
  Tensor on_device = Tensor::zeros({2}, DType::f32, Device::cuda);
  Tensor on_host = Tensor::zeros({2}, DType::f32);
  try {
    c->all_gather(on_device, on_host);
    FAIL() << "a device input and a host output were gathered";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all_gather: input"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("different devices"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c->reduce_scatter(on_host, on_device), Error);
}

TEST(Launch, PlainProcessIsNotUnderMpi) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK"))
    GTEST_SKIP() << "this test process was started by an MPI launcher";
  const LaunchInfo li = detect_launch();
  EXPECT_FALSE(li.under_mpi);
  EXPECT_EQ(li.world_size, 1);
  auto g = ProcessGrid::create({});
  EXPECT_EQ(g->world_size(), 1);
  EXPECT_EQ(g->world().backend(), "local");
  EXPECT_FALSE(g->parallel());
}

TEST(Launch, LaunchersAreRecognisedFromTheirEnvironment) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK"))
    GTEST_SKIP() << "this test process was started by an MPI launcher";
  // srun --mpi=pmix: the rank from PMIx, the size from SLURM.
  setenv("PMIX_RANK", "5", 1);
  setenv("SLURM_NTASKS", "16", 1);
  LaunchInfo li = detect_launch();
  EXPECT_TRUE(li.under_mpi);
  EXPECT_EQ(li.launcher, "pmix");
  EXPECT_EQ(li.rank, 5);
  EXPECT_EQ(li.world_size, 16);
  unsetenv("PMIX_RANK");
  unsetenv("SLURM_NTASKS");
  // Open MPI's mpirun.
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  li = detect_launch();
  EXPECT_EQ(li.launcher, "openmpi");
  EXPECT_EQ(li.rank, 3);
  EXPECT_EQ(li.world_size, 4);
  unsetenv("OMPI_COMM_WORLD_SIZE");
  unsetenv("OMPI_COMM_WORLD_RANK");
  // SLURM alone (srun without an MPI plugin) is not an MPI launch.
  setenv("SLURM_PROCID", "1", 1);
  EXPECT_FALSE(detect_launch().under_mpi);
  unsetenv("SLURM_PROCID");
}

TEST(Launch, PlainProcessRefusesAParallelLayout) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK"))
    GTEST_SKIP() << "this test process was started by an MPI launcher";
  if (!mpi_compiled()) {
    EXPECT_THROW(ProcessGrid::create({2, 1}), Error);
    return;
  }
  // MPI starts as a one-rank singleton and the layout does not fit it.
  try {
    ProcessGrid::create({2, 2});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("launch with mpirun"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lethe
