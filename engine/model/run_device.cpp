#include "engine/model/run_device.h"

#include <cstdlib>
#include <memory>

#include "engine/core/debug_mode.h"
#include "engine/core/error.h"
#include "engine/parallel/launcher_env.h"
#include "kernels/device.h"
#include "kernels/host_staged_device.h"

namespace lethe {

DeviceChoice parse_device_choice(const std::string& s, const std::string& where) {
  if (s == "cpu") return DeviceChoice::cpu;
  if (s == "cuda") return DeviceChoice::cuda;
  if (s == "auto") return DeviceChoice::automatic;
  LETHE_FAIL(where, ": must be cpu, cuda or auto, got '", s, "'");
}

namespace {
bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "1";
}

// LETHE_ATTENTION_FORWARD / LETHE_ATTENTION_BACKWARD pick the CUDA attention kernels;
// returns what the run line says about them.
std::string select_attention_from_env(const std::string& where) {
  const char* f = std::getenv("LETHE_ATTENTION_FORWARD");
  const char* b = std::getenv("LETHE_ATTENTION_BACKWARD");
  const std::string fwd = f && *f ? f : "wmma", bwd = b && *b ? b : "wmma";
  select_cuda_attention_kernels(fwd, where + ": LETHE_ATTENTION_FORWARD", bwd, where + ": LETHE_ATTENTION_BACKWARD");
  std::string line = " | attention: " + cuda_attention_kernels();
  // Debug mode's other gradients add in a fixed order on the GPU; attention's dq does only
  // with the deterministic kernel, which is opt-in until it has run on hardware.
  if (debug_mode() && bwd != "mma_deterministic")
    line += " (debug mode: attention dq still adds with atomics; LETHE_ATTENTION_BACKWARD=mma_deterministic "
            "makes it bitwise repeatable)";
  return line;
}
}  // namespace

RunDevice resolve_run_device(DeviceChoice device, std::optional<Precision> precision, const std::string& where) {
  std::string note;
  // auto takes a visible GPU once its path is opted into, in the GPU's precision; an f32
  // run stays on the CPU, which is where f32 runs.
  if (device == DeviceChoice::automatic && env_set("LETHE_UNVERIFIED_CUDA") && cuda_compiled() &&
      !cuda_devices().empty() && precision.value_or(Precision::bf16) == Precision::bf16)
    device = DeviceChoice::cuda;
  if (device == DeviceChoice::cuda && env_set("LETHE_TEST_HOST_STAGED_DEVICE")) {
    LETHE_CHECK(precision.value_or(Precision::bf16) == Precision::bf16, where,
                ": cuda runs the bf16 policy (its kernels compute in bf16); precision f32 runs on the CPU");
    // Installed for the rest of the process (the model's tensors outlive this call), and
    // uninstalled at exit, after every run has freed its tensors.
    static const std::unique_ptr<ScopedHostStagedDevice> stand_in = std::make_unique<ScopedHostStagedDevice>();
    RunDevice r;
    r.device = Device::cuda;
    r.precision = Precision::bf16;
    // The CUDA kernels are chosen (and the names checked) as on a GPU, though the CPU's run.
    const std::string attention = select_attention_from_env(where);
    r.line = "device: cuda (the host-staged test device: CPU kernels behind the device op boundary) | precision: bf16" +
             attention + " (not used: the CPU's attention runs)";
    return r;
  }
  if (device == DeviceChoice::cuda) {
    LETHE_CHECK(cuda_compiled(), where, ": cuda: this lethe was built without CUDA (nvcc was not found when it was "
                "configured); use cpu");
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    LETHE_CHECK(!cuda_devices().empty(), where, ": cuda: no CUDA device is visible",
                visible ? std::string(" (CUDA_VISIBLE_DEVICES='") + visible + "')" : std::string(),
                "; use cpu");
    LETHE_CHECK(env_set("LETHE_UNVERIFIED_CUDA"), where, ": cuda: this command's CUDA path has not yet run on a GPU "
                "(docs/gpu-results.md); set LETHE_UNVERIFIED_CUDA=1 to run it anyway, or use cpu");
    LETHE_CHECK(precision.value_or(Precision::bf16) == Precision::bf16, where,
                ": cuda runs the bf16 policy (its kernels compute in bf16); precision f32 runs on the CPU");
    const std::string attention = select_attention_from_env(where);
    // Under an MPI launcher ProcessGrid::create picks each rank's GPU before anything is
    // allocated; selecting device 0 here would first give every rank a context there.
    if (!detect_launch().under_mpi) select_cuda_device(0);
    RunDevice r;
    r.device = Device::cuda;
    r.precision = Precision::bf16;
    r.line = "device: cuda (" + cuda_devices()[0].name + ", unverified) | precision: bf16" +
             (precision ? "" : " (the GPU's default)") + attention;
    return r;
  }
  if (device == DeviceChoice::automatic) {
    const size_t n = cuda_devices().size();
    note = n ? " (auto: " + std::to_string(n) + " GPU" + (n > 1 ? "s" : "") + " visible; " +
                   (precision == Precision::f32 ? std::string("f32 runs on the CPU")
                                                : std::string("its path has not yet run on a GPU: "
                                                              "LETHE_UNVERIFIED_CUDA=1 uses it")) +
                   ")"
             : " (auto: no GPU visible)";
  }
  RunDevice r;
  r.precision = precision.value_or(Precision::f32);
  r.line = "device: cpu" + note + " | precision: " + precision_name(r.precision) +
           (r.precision == Precision::bf16 ? " (emulated on the CPU: bf16 values in f32 storage)" : "") +
           (precision ? "" : " (the CPU's default)");
  return r;
}

}  // namespace lethe
