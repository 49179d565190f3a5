# Process grid, communicators and the tensor/data-parallel building blocks. The local
# communicator always builds; MPI and NCCL ones join when the root found them. The model
# links this library, so it sits below lethe_model and above the kernels.
add_library(lethe_parallel STATIC
  engine/parallel/communicator.cpp engine/parallel/local_comm.cpp engine/parallel/launcher_env.cpp
  engine/parallel/grid.cpp engine/parallel/failure.cpp engine/parallel/regions.cpp
  engine/parallel/vocab_parallel.cpp engine/parallel/grad_reducer.cpp engine/parallel/stop_request.cpp
  engine/parallel/staged_comm.cpp engine/parallel/vocab_sample.cpp engine/parallel/watchdog.cpp)
target_link_libraries(lethe_parallel PUBLIC lethe_kernels)
if(LETHE_HAVE_MPI)
  target_sources(lethe_parallel PRIVATE engine/parallel/mpi_comm.cpp)
  target_compile_definitions(lethe_parallel PUBLIC LETHE_HAVE_MPI=1)
  target_link_libraries(lethe_parallel PUBLIC MPI::MPI_CXX)
endif()
if(LETHE_HAVE_NCCL)
  target_sources(lethe_parallel PRIVATE engine/parallel/nccl_comm.cpp)
  target_compile_definitions(lethe_parallel PUBLIC LETHE_HAVE_NCCL=1)
  target_include_directories(lethe_parallel PRIVATE ${NCCL_INCLUDE_DIR})
  target_link_libraries(lethe_parallel PRIVATE ${NCCL_LIBRARY} CUDA::cudart)
endif()

# Tensor-parallel model layout and the ZeRO-1 optimizer belong to lethe_model (model and
# optim layers), which the root file defines after including this one: add them once the
# directory is processed.
cmake_language(DEFER DIRECTORY ${PROJECT_SOURCE_DIR} CALL target_sources lethe_model PRIVATE
  ${PROJECT_SOURCE_DIR}/engine/model/tp_layout.cpp ${PROJECT_SOURCE_DIR}/engine/optim/sharded_optimizer.cpp
  ${PROJECT_SOURCE_DIR}/engine/model/parallel_terms.cpp)
