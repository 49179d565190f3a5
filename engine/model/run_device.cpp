#include "engine/model/run_device.h"

#include <cstdlib>

#include "engine/core/error.h"
#include "kernels/device.h"

namespace lethe {

DeviceChoice parse_device_choice(const std::string& s, const std::string& where) {
  if (s == "cpu") return DeviceChoice::cpu;
  if (s == "cuda") return DeviceChoice::cuda;
  if (s == "auto") return DeviceChoice::automatic;
  LETHE_FAIL(where, ": must be cpu, cuda or auto, got '", s, "'");
}

RunDevice resolve_run_device(DeviceChoice device, std::optional<Precision> precision, const std::string& where) {
  std::string note;
  if (device == DeviceChoice::cuda) {
    LETHE_CHECK(cuda_compiled(), where, ": cuda: this lethe was built without CUDA (nvcc was not found when it was "
                "configured); use cpu");
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    LETHE_CHECK(!cuda_devices().empty(), where, ": cuda: no CUDA device is visible",
                visible ? std::string(" (CUDA_VISIBLE_DEVICES='") + visible + "')" : std::string(),
                "; use cpu");
    LETHE_FAIL(where, ": cuda: no command runs on a GPU in this version: the model and optimizer have a device "
               "path, but the unlearning terms, evaluation and checkpoints do not yet (docs/cuda.md); use cpu");
  }
  if (device == DeviceChoice::automatic) {
    const size_t n = cuda_devices().size();
    note = n ? " (auto: " + std::to_string(n) + " GPU" + (n > 1 ? "s" : "") +
                   " visible, but this version runs the model on the CPU)"
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
