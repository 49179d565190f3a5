# CUDA backend: kernels beside their CPU references, GEMMs through cuBLASLt. Included by
# the root CMakeLists.txt only when nvcc was found. Host headers in kernels/cuda/*.h pull
# in no CUDA header, so engine code that calls these launchers builds with g++.
add_library(lethe_cuda STATIC
  kernels/cuda/runtime.cu kernels/cuda/arena.cu kernels/cuda/cast.cu
  kernels/cuda/embedding.cu kernels/cuda/rmsnorm.cu kernels/cuda/rope.cu kernels/cuda/swiglu.cu
  kernels/cuda/attention.cu kernels/cuda/attention_fwd_mma.cu kernels/cuda/attention_bwd_mma.cu
  kernels/cuda/cross_entropy.cu kernels/cuda/hidden_loss.cu kernels/cuda/optim.cu kernels/cuda/linear.cu
  kernels/cuda/numerics.cu kernels/cuda/elementwise.cu kernels/cuda/attention_decode.cu kernels/cuda/sample.cu
  # The memory backend, here rather than in lethe_kernels, because its converting copies
  # launch the cast kernels; lethe_kernels (kernels/device.cpp) registers it and links this.
  kernels/cuda/device.cu)
# sm_80 (A100) and sm_90a (H100/H200, keeps wgmma open); the target property wins over
# the project-wide default of 90.
set_target_properties(lethe_cuda PROPERTIES
  CUDA_ARCHITECTURES "80;90a"
  POSITION_INDEPENDENT_CODE ON
  CUDA_SEPARABLE_COMPILATION OFF)
target_include_directories(lethe_cuda PUBLIC ${PROJECT_SOURCE_DIR})
target_compile_options(lethe_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo -Xcompiler=-Wall>)
# Only the CUDA runtime and lethe_core (errors, the peak-FLOP/s table): the GPU tests and
# benchmark link this and lethe_kernels (CPU references), never HDF5, yaml-cpp or MPI, so
# they run on a machine that has none of those. cuBLASLt is not linked: linear.cu opens
# libcublasLt.so.<major> with dlopen at the first matrix product, so a binary starts, and
# runs every other kernel, on a machine without it (only its header is needed here).
target_link_libraries(lethe_cuda PUBLIC lethe_core CUDA::cudart ${CMAKE_DL_LIBS})
