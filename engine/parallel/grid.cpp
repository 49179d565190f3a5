#include "engine/parallel/grid.h"

#include <cstring>
#include <set>
#include <string>

#include "engine/core/log.h"
#include "engine/parallel/launcher_env.h"
#include "engine/parallel/staged_comm.h"
#include "kernels/device.h"
#include "kernels/host_staged_device.h"
#ifdef LETHE_HAVE_MPI
#include "engine/parallel/mpi_comm.h"
#endif
#ifdef LETHE_HAVE_NCCL
#include "engine/parallel/nccl_comm.h"
#endif

namespace lethe {

namespace {
#ifdef LETHE_HAVE_MPI
// Whether every rank of `world` holds a different GPU: each rank's uuid (32 hex digits)
// all-gathered as bytes.
bool gpus_distinct(const std::string& uuid, Communicator& world) {
  constexpr int64_t kBytes = 32;
  LETHE_CHECK(int64_t(uuid.size()) == kBytes, "GPU uuid '", uuid, "': expected ", kBytes, " hex digits");
  Tensor mine = Tensor::zeros({kBytes / 4}, DType::i32), all = Tensor::zeros({world.size() * kBytes / 4}, DType::i32);
  std::memcpy(mine.raw(), uuid.data(), size_t(kBytes));
  world.all_gather(mine, all);
  std::set<std::string> seen;
  for (int r = 0; r < world.size(); ++r)
    seen.emplace(static_cast<const char*>(all.raw()) + r * kBytes, size_t(kBytes));
  return int(seen.size()) == world.size();
}
#endif
}  // namespace

void ParallelConfig::validate() const {
  LETHE_CHECK(tp >= 1, "parallel.tp must be >= 1, got ", tp);
  LETHE_CHECK(dp >= 1, "parallel.dp must be >= 1, got ", dp);
  LETHE_CHECK(bucket_elements >= 1, "parallel.bucket_elements must be >= 1, got ", bucket_elements);
}

std::shared_ptr<ProcessGrid> ProcessGrid::single() {
  auto g = std::make_shared<ProcessGrid>();
  g->world_ = make_local_communicator();
  g->tp_ = make_local_communicator();
  g->dp_ = make_local_communicator();
  return g;
}

std::shared_ptr<ProcessGrid> ProcessGrid::from_world(std::shared_ptr<Communicator> world, const ParallelConfig& cfg) {
  cfg.validate();
  LETHE_CHECK(cfg.world() == world->size(), "parallel.tp * parallel.dp = ", cfg.tp, " * ", cfg.dp, " = ", cfg.world(),
              " but the job has ", world->size(), " rank", world->size() == 1 ? "" : "s",
              world->size() == 1 ? " (launch with mpirun -np N or srun)" : "");
  auto g = std::make_shared<ProcessGrid>();
  g->cfg_ = cfg;
  g->world_ = std::move(world);
  if (g->world_->size() == 1) {
    g->tp_ = make_local_communicator();
    g->dp_ = make_local_communicator();
    return g;
  }
#ifdef LETHE_HAVE_MPI
  const int r = g->world_->rank();
  g->tp_ = mpi_split(*g->world_, r / cfg.tp, r % cfg.tp);
  g->dp_ = mpi_split(*g->world_, r % cfg.tp, r / cfg.tp);
  return g;
#else
  LETHE_FAIL("a ", g->world_->size(), "-rank job needs MPI, and this build has none");
#endif
}

std::shared_ptr<ProcessGrid> ProcessGrid::create(const ParallelConfig& cfg, Device device) {
  cfg.validate();
  const LaunchInfo li = detect_launch();
  if (!li.under_mpi && cfg.world() == 1) {
    auto g = single();
    g->cfg_ = cfg;
    return g;
  }
#ifdef LETHE_HAVE_MPI
  auto grid = from_world(mpi_world(), cfg);
  const NodeRank node = mpi_node_rank();
  grid->local_rank_ = node.local_rank;
  grid->local_size_ = node.local_size;
  // tp ranks are neighbours (world rank = dp_rank * tp + tp_rank): a group stays on one
  // node only when the node holds whole groups. Across nodes every layer's all-reduces
  // cross the network, which works but is slow; say so once.
  if (cfg.tp > 1 && node.local_size % cfg.tp != 0 && grid->rank() == 0)
    log::warn("parallel.tp=", cfg.tp, " but this node runs ", node.local_size,
              " ranks: tensor-parallel groups span nodes, and their all-reduces cross the network");
  if (device == Device::cpu || grid->world_size() == 1) return grid;
  if (host_staged_device_installed()) {
    // The test device (host memory behind the device op boundary): collectives of its
    // tensors go through host copies, as ranks sharing a GPU do below.
    grid->tp_ = make_host_staged_communicator(grid->tp_);
    grid->dp_ = make_host_staged_communicator(grid->dp_);
    grid->world_ = make_host_staged_communicator(grid->world_);
    return grid;
  }
  // Each rank's GPU: its node-local rank round-robin over the GPUs it sees. Launchers that
  // bind one GPU per task (srun --gpus-per-task, CUDA_VISIBLE_DEVICES per rank) show each
  // rank one device, index 0. NCCL serves the job when no two ranks anywhere hold the same
  // physical GPU (their uuids, gathered over the world, so every rank decides alike);
  // otherwise collectives of device tensors are staged through host memory over MPI.
  const std::vector<DeviceInfo> devs = cuda_devices();
  LETHE_CHECK(!devs.empty(), "device tensors across ranks need a GPU, and rank ", grid->rank(), " sees none");
  const int gpu = grid->local_rank_ % int(devs.size());
  const bool distinct = gpus_distinct(devs[size_t(gpu)].uuid, *grid->world_);
  // Before anything is allocated: no context on another GPU first.
  select_cuda_device(gpu);
#ifdef LETHE_HAVE_NCCL
  if (distinct) {
    // NCCL groups mirror the MPI ones; MPI stays for the unique-id exchange and aborts.
    // The world group carries only host scalars and barriers (stop votes, the ZeRO norm,
    // checkpoint meetings): no NCCL communicator, and none of its device buffers, for it.
    grid->tp_ = make_nccl_communicator(grid->tp_);
    grid->dp_ = make_nccl_communicator(grid->dp_);
    grid->world_ = make_host_staged_communicator(grid->world_);
    if (grid->rank() == 0) log::info("collectives of device tensors run on NCCL (one GPU per rank)");
    return grid;
  }
#endif
  grid->tp_ = make_host_staged_communicator(grid->tp_);
  grid->dp_ = make_host_staged_communicator(grid->dp_);
  grid->world_ = make_host_staged_communicator(grid->world_);
  if (grid->rank() == 0)
    log::info(distinct ? "this build has no NCCL" : "ranks share GPUs",
              ": collectives of device tensors are staged through host memory (MPI)");
  return grid;
#else
  (void)device;
  LETHE_FAIL("parallel.tp * parallel.dp = ", cfg.world(), (li.under_mpi ? " under an MPI launcher" : ""),
             ", but this build has no MPI (install Open MPI and reconfigure)");
#endif
}

std::string ProcessGrid::describe() const {
  return "tp=" + std::to_string(tp()) + " x dp=" + std::to_string(dp()) + " (" + backend() + "), rank " +
         std::to_string(rank()) + " (local " + std::to_string(local_rank_) + " of " + std::to_string(local_size_) + ")";
}

}  // namespace lethe
