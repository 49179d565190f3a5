// Which OpenBLAS kernel the CPU path runs, and choosing a better one than OpenBLAS did.
//
// Debian's OpenBLAS (DYNAMIC_ARCH) picks its kernels once, when the library loads, from
// cpuid. Inside many VMs it does not recognise the CPU model and falls back to a generic
// SSE3 kernel ("Prescott") on a machine with AVX-512: GEMM then runs about 6x slower.
// The library reads OPENBLAS_CORETYPE only at load time and has no API to switch, so the
// fix is to re-execute the process with OPENBLAS_CORETYPE set to the best kernel the CPU
// and the OS actually support (cpuid features plus the OS-enabled register state).
#pragma once

#include <string>

namespace lethe {

// ISA level a kernel needs or a CPU offers: 0 SSE, 1 AVX, 2 AVX2+FMA, 3 AVX-512 (F, CD,
// BW, DQ, VL: what OpenBLAS's SkylakeX kernels use).
int cpu_isa_level();
// The OpenBLAS core type name for an ISA level ("Prescott", "Sandybridge", "Haswell",
// "SkylakeX").
const char* core_for_isa_level(int level);
// The ISA level an OpenBLAS core type name needs; -1 if the name is not known to lethe.
int isa_level_of_core(const std::string& core);

struct BlasKernel {
  std::string library;     // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ... SkylakeX" (openblas_get_config)
  std::string core;        // the kernel in use (openblas_get_corename)
  std::string cpu_best;    // the best kernel this CPU supports
  bool dynamic = false;    // the library can switch kernels (DYNAMIC_ARCH)
  bool below_cpu = false;  // the kernel in use needs less than the CPU offers
  std::string how;         // how it was chosen: "detected by OpenBLAS", "selected by lethe ...", "OPENBLAS_CORETYPE"
};
BlasKernel blas_kernel();
// One line for logs and `lethe version`: "BLAS: OpenBLAS 0.3.21 ..., kernel SkylakeX (...)".
std::string blas_kernel_line();

// Call first thing in main(), before any thread or MPI starts. When OpenBLAS chose a
// kernel below what the CPU supports and the user did not set OPENBLAS_CORETYPE, the
// process is re-executed (same pid, arguments and environment, plus OPENBLAS_CORETYPE)
// and this call does not return. An OPENBLAS_CORETYPE that needs instructions this CPU
// lacks is refused with an error (it would end in SIGILL). LETHE_BLAS_AUTO=0 turns the
// selection off.
void select_blas_kernel(char** argv);

}  // namespace lethe
