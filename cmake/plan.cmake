# Memory and communication planner, and the `lethe plan` command that prints it. Included
# by the root CMakeLists.txt before the CLI library, which links it when present.
add_library(lethe_plan STATIC
  engine/plan/memory_plan.cpp engine/plan/plan_inputs.cpp engine/plan/host_fit.cpp engine/plan/device_fit.cpp engine/cli/plan_cmd.cpp)
target_link_libraries(lethe_plan PUBLIC lethe_unlearn lethe_io)
# Where `lethe plan` finds model presets and recipes by name (engine/plan/plan_inputs.h).
target_compile_definitions(lethe_plan PRIVATE LETHE_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
  LETHE_DATADIR="${CMAKE_INSTALL_DATADIR}")
