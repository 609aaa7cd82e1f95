# The two commands of the README:
#   make run    set up (venv + pinned packages) and run the whole pipeline on the configured channel
#   make test   set up and run the checks: ruff, mypy, snakemake --lint, then the fast tests, then the
#               slow ones (each test runs once: the two tiers split the suite by the `slow` marker)
#   make test-fast   lint and the fast tests only (no Snakemake job, no training)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
TARGET ?= all
# llama-cpp-python compiles llama.cpp: for the instruction sets every x86-64-v3 CPU has, not -march=native
# (its AMX kernels crash where the kernel does not grant AMX state, as in some containers).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: run test test-fast setup system-deps lint

run: setup
	$(BIN)/snakemake --cores $(CORES) $(TARGET)

test: setup lint
	$(BIN)/pytest -m "not slow"
	$(BIN)/pytest -m slow

test-fast: setup lint
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check scripts tests bench
	$(BIN)/mypy
	$(BIN)/snakemake --lint

setup: system-deps $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# OpenBLAS (cmeel-openblas, loaded before mlx on Linux: ~20x faster CPU training) needs libgfortran5.
system-deps:
	@if [ "$$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q 'libgfortran.so.5 '; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq libgfortran5 >/dev/null; \
	  else \
	    echo "tubetune: install libgfortran5 (e.g. sudo apt-get install libgfortran5) for fast CPU training"; \
	  fi; \
	fi
