// Where a run computes (`train.device: cpu | cuda | auto`) and in which precision
// (`train.precision: bf16 | f32`), chosen once at start-up, before anything is allocated.
//
// In this version the model runs on the CPU only: the CUDA kernels (kernels/cuda) are
// tested against their CPU references by tools/gpu_check.sh, but no model op dispatches to
// them yet (docs/cuda.md, "The GPU engine"). So `cuda` is refused with the reason, never
// silently run on the CPU, and `auto` picks the CPU and says so when a GPU is visible.
// bf16 on the CPU is the exact emulation of the GPU policy (llama.h), not a faster mode.
#pragma once
#include <optional>
#include <string>

#include "engine/core/precision.h"

namespace lethe {

enum class DeviceChoice { cpu, cuda, automatic };

// "cpu", "cuda" or "auto"; `where` names the key in the error.
DeviceChoice parse_device_choice(const std::string& s, const std::string& where);

struct RunDevice {
  Precision precision = Precision::f32;
  std::string line;  // what the run prints: device, and precision with its origin
};

// Resolves the device (failing, with `where` naming the key, when it cannot be served)
// and the precision: the one asked for, else the device's default (f32 on the CPU).
RunDevice resolve_run_device(DeviceChoice device, std::optional<Precision> precision, const std::string& where);

}  // namespace lethe
