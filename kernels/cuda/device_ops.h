// The CUDA kernels (kernels/cuda/*.h) behind the device op boundary, kernels/device_ops.h.
// Host C++ only: no CUDA header, so g++ builds the code that registers it.
#pragma once
#include <memory>

#include "kernels/device_ops.h"

namespace lethe {

// Makes no CUDA call (the cuBLASLt context and the scratch buffers are made at first use),
// so it may run during static initialisation of a binary started on a machine without a
// GPU. One per process: the GEMM plans and scratch it caches are not guarded for
// concurrent callers, and every launch goes to the legacy default stream of the current
// device.
std::unique_ptr<DeviceOps> make_cuda_device_ops();

}  // namespace lethe
