# Music source separation service — developer entry points.
#   make setup   install what a fresh machine lacks (redis-server, the Python environment)
#   make test    run the test suite (real redis-server, S3 server and Demucs CLI)
#   make demo    run the whole pipeline locally on a sample song
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test lint clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone: 2.13.0 is the CPU build on this machine's disk (see README)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[demucs,rest,test]'
	@touch $@

setup: $(VENV)/.installed
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null || { echo "redis-server is missing and could not be installed"; exit 1; }

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- benchmarks (bench/run.py; figures in README "Benchmarks") ---
.PHONY: bench bench-quick
bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: setup
	$(PY) -m bench.run --quick $(BENCH_ARGS)
