// Where a run computes (`train.device: cpu | cuda | auto`) and in which precision
// (`train.precision: bf16 | f32`), chosen once at start-up, before anything is allocated.
//
// The model and optimizer have a device path (kernels/device_ops.h): `lethe train` and
// `lethe unlearn` (tp x dp, with a tp that divides n_kv_heads), `lethe eval` and `lethe generate` can run on
// CUDA, in bf16. It has not yet run on a GPU, so it is opt-in: `cuda` needs
// LETHE_UNVERIFIED_CUDA=1 besides a CUDA build and a visible GPU; with it, `auto` picks a
// visible GPU (in bf16), without it the CPU, saying why. `cuda` is never silently run on
// the CPU instead. bf16 on the CPU is the exact emulation of the GPU policy (llama.h), not
// a faster mode.
//
// Testing hook: LETHE_TEST_HOST_STAGED_DEVICE=1 serves `cuda` with the host-staged device
// (kernels/host_staged_device.h: host memory and the CPU kernels behind the device op
// boundary), so the command's device path runs, and is compared with the emulation, on a
// machine without a GPU.
#pragma once
#include <optional>
#include <string>

#include "engine/core/precision.h"
#include "engine/core/tensor.h"

namespace lethe {

enum class DeviceChoice { cpu, cuda, automatic };

// "cpu", "cuda" or "auto"; `where` names the key in the error.
DeviceChoice parse_device_choice(const std::string& s, const std::string& where);

struct RunDevice {
  Device device = Device::cpu;
  Precision precision = Precision::f32;
  std::string line;  // what the run prints: device, and precision with its origin
};

// Resolves the device (failing, with `where` naming the key, when it cannot be served)
// and the precision: the one asked for, else the device's default (f32 on the CPU).
RunDevice resolve_run_device(DeviceChoice device, std::optional<Precision> precision, const std::string& where);

}  // namespace lethe
