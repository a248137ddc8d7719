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

# The C++ unit tests through CMake (CPU kernels; the CUDA ones are compiled by setup).
cpp-test: setup
	cmake -S . -B cmake-build -DPython3_EXECUTABLE=$(abspath $(BIN)/python) > cmake-build.log
	cmake --build cmake-build -j2 >> cmake-build.log
	ctest --test-dir cmake-build --output-on-failure

bench: setup
	$(BIN)/python benchmarks/bench_relative_error.py

clean:
	rm -rf build dist cmake-build cmake-build.log *.egg-info lsa_fast/_C*.so
