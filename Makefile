# The two commands of the README: `make demo` and `make test`. Both set up a virtual
# environment in .venv (torch, then lsa_fast built against it) the first time.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: setup demo test cpp-test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch>=2.10" numpy setuptools wheel ninja
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

demo: setup
	$(BIN)/lsa-fast demo

test: setup cpp-test
	$(BIN)/python -m pytest -q -p no:cacheprovider

# nvcc, when there is one: the CMake build then compiles the CUDA kernels too (no GPU needed).
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CMAKE_CUDA := $(if $(NVCC),-DLSA_FAST_CUDA=ON -DCMAKE_CUDA_COMPILER=$(NVCC),-DLSA_FAST_CUDA=OFF)

# The C++ unit tests through CMake, and the extension built by CMake with the same flags
# as setup.py (csrc/flags/), CUDA kernels included where nvcc is found.
cpp-test: setup
	cmake -S . -B cmake-build -DPython3_EXECUTABLE=$(abspath $(BIN)/python) $(CMAKE_CUDA) > cmake-build.log
	cmake --build cmake-build -j2 >> cmake-build.log
	ctest --test-dir cmake-build --output-on-failure

bench: setup
	$(BIN)/python benchmarks/bench_relative_error.py

clean:
	rm -rf build dist cmake-build cmake-build.log *.egg-info lsa_fast/_C*.so
