# The README's commands. Every target first creates or refreshes .venv (idempotent: a stamp
# file records the pyproject.toml it was built from, so a second run installs nothing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgedistill-installed
# llama-cpp-python has no wheels and builds from source. The default -march=native build
# enables AMX code that segfaults on quantized GGUFs on some Xeons (llama.cpp issue 20824).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DLLAVA_BUILD=OFF

.PHONY: setup demo test test-fast clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# CPU torch first: an unpinned torch pulls gigabytes of CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	@# Built once, with our flags, never from a cached wheel of unknown flags.
	@$(BIN)/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '0.3.36')" 2>/dev/null || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q --no-cache-dir llama-cpp-python==0.3.36
	$(BIN)/python -m pip install -q -e '.[ml,dev]'
	@# Held-out general English (news from gensim's test data; nothing else of gensim).
	$(BIN)/python -m edgedistill.english --install
	@# Debian's chromium renders report.html in a test (skipped where it cannot be installed).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "note: chromium not installed; the report rendering test will be skipped"; }
	@touch $(STAMP)

# The main job: distil the bundled all-MiniLM-L6-v2 for the laptop profile, 2.5x faster, on
# the bundled Wikipedia prose, general English and docstrings, export and quantize it, verify
# every file, measure it here and write the report. Re-running reuses the finished stages.
DEMO_OUT ?= runs/demo
demo: $(STAMP)
	$(BIN)/edgedistill export --target laptop --speedup 2.5 --out $(DEMO_OUT)

# The whole test suite (slow end-to-end tests included), as CI runs it.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
