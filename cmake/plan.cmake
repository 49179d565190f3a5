# Memory and communication planner, and the `lethe plan` command that prints it. Included
# by the root CMakeLists.txt before the CLI library, which links it when present.
add_library(lethe_plan STATIC
  engine/plan/memory_plan.cpp engine/plan/plan_inputs.cpp engine/cli/plan_cmd.cpp)
target_link_libraries(lethe_plan PUBLIC lethe_unlearn lethe_io)
