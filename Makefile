# The two commands of the README: `make demo` and `make test`. Both set up a virtual
# environment in .venv (torch, cmake, then lsa_fast built against that torch) the first
# time; `make test` adds the test extras (pytest and the peer libraries used as oracles),
# which the demo does not need. Needed beforehand: Python >= 3.10 with venv, a C++17
# compiler, make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
# The venv's cmake (pip-installed by setup), else one on PATH.
CMAKE ?= $(if $(wildcard $(BIN)/cmake),$(BIN)/cmake,cmake)
CTEST ?= $(if $(wildcard $(BIN)/ctest),$(BIN)/ctest,ctest)

.PHONY: setup setup-test demo test cpp-test bench clean

# Two stamps: .installed (the runtime dependencies, the build tools and lsa_fast) and
# .installed-test (the test extras on top), so `make demo` stays light and a later
# `make test` installs what it adds.
setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# cmake (>= 3.18, for the C++ tests of `make test`) comes from PyPI: no system package needed.
$(VENV)/.installed: $(SOURCES)
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "make: lsa_fast needs Python >= 3.10 (torch >= 2.10 has no wheels for older ones); '$(PYTHON)' is" \
	       "$$($(PYTHON) --version 2>&1 || echo missing). Run make PYTHON=python3.12 (or another >= 3.10)." >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch>=2.10" numpy setuptools wheel ninja "cmake>=3.18"
	$(BIN)/python -m pip install -q --no-build-isolation -e .
	touch $@

# The test extras as pyproject.toml lists them (read back from the installed metadata:
# one list), installed without rebuilding the extension.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -c 'from importlib.metadata import requires; from re import split; \
	  print("\n".join(split(r"\s*;", r)[0] for r in requires("lsa_fast") if "extra == \"test\"" in r))' \
	  > $(VENV)/test-requirements.txt
	$(BIN)/python -m pip install -q -r $(VENV)/test-requirements.txt
	touch $@

demo: setup
	$(BIN)/lsa-fast demo

test: setup-test cpp-test
	$(BIN)/python -m pytest -q -p no:cacheprovider

# nvcc, when there is one: the CMake build then compiles the CUDA kernels too (no GPU needed).
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CMAKE_CUDA := $(if $(NVCC),-DLSA_FAST_CUDA=ON -DCMAKE_CUDA_COMPILER=$(NVCC),-DLSA_FAST_CUDA=OFF)

# The C++ unit tests through CMake, and the extension built by CMake with the same flags
# as setup.py (csrc/flags/), CUDA kernels included where nvcc is found. CMake's own
# chatter goes to cmake-build.log; its tail is shown when a step fails.
cpp-test: setup
	@command -v $(CMAKE) >/dev/null 2>&1 || { \
	  echo "make: cmake not found ($(CMAKE)). 'make setup' pip-installs it into $(VENV) when it (re)creates it;" \
	       "run $(BIN)/python -m pip install cmake, or install cmake >= 3.18 on PATH." >&2; exit 2; }
	$(CMAKE) -S . -B cmake-build -DPython3_EXECUTABLE=$(abspath $(BIN)/python) $(CMAKE_CUDA) > cmake-build.log 2>&1 \
	  || { tail -n 30 cmake-build.log; exit 1; }
	$(CMAKE) --build cmake-build -j2 >> cmake-build.log 2>&1 || { tail -n 30 cmake-build.log; exit 1; }
	$(CTEST) --test-dir cmake-build --output-on-failure

bench: setup
	$(BIN)/python benchmarks/bench_relative_error.py

clean:
	rm -rf build dist cmake-build cmake-build.log *.egg-info lsa_fast/_C*.so
