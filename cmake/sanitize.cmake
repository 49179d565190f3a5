# Sanitizer and fuzzing builds.
#   -DLETHE_SANITIZE=address,undefined   ASan + UBSan on every target (make test-sanitize)
#   -DLETHE_FUZZ=ON                      libFuzzer targets in tools/fuzz (clang only)
# Both are meant for CPU builds: configure them with -DLETHE_CUDA=OFF, nvcc does not take
# these flags.
set(LETHE_SANITIZE "" CACHE STRING "Comma-separated sanitizers for every target, e.g. address,undefined")
option(LETHE_FUZZ "Build the libFuzzer targets in tools/fuzz (needs clang)" OFF)

if(LETHE_SANITIZE)
  if(LETHE_CUDA)
    message(FATAL_ERROR "LETHE_SANITIZE needs -DLETHE_CUDA=OFF")
  endif()
  # Frame pointers keep the reports' stacks whole without slow unwinding; UBSan findings
  # abort instead of scrolling past, so a test with undefined behaviour fails.
  add_compile_options(-fsanitize=${LETHE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${LETHE_SANITIZE})
  message(STATUS "lethe sanitizers: ${LETHE_SANITIZE}")
endif()

if(LETHE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "LETHE_FUZZ needs clang (-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang)")
  endif()
  # The engine is instrumented for coverage and the sanitizers; libFuzzer's main is linked
  # into the fuzz targets only, so the engine's own tests and binary still link.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
  # The targets link lethe_cli_lib, which the root file defines after including this one.
  function(lethe_fuzz_targets)
    foreach(target fuzz_safetensors fuzz_gguf fuzz_yaml_config fuzz_checkpoint_manifest fuzz_token_dataset)
      add_executable(${target} ${PROJECT_SOURCE_DIR}/tools/fuzz/${target}.cpp)
      target_link_libraries(${target} PRIVATE lethe_cli_lib lethe_io)
      target_link_options(${target} PRIVATE -fsanitize=fuzzer)
      set_target_properties(${target} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/fuzz)
    endforeach()
  endfunction()
  cmake_language(DEFER DIRECTORY ${PROJECT_SOURCE_DIR} CALL lethe_fuzz_targets)
endif()
