# Music source separation service — developer entry points.
#   make setup   install what a fresh machine lacks (redis-server, tcmalloc, the Python environment)
#   make test    run the whole test suite (real redis-server, S3 server and Demucs CLI), on
#                two processes (pytest-xdist; TEST_PROCESSES=1 for one)
#   make test-fast  the fast tier: no real Demucs, no uvicorn subprocess, no browser
#   make demo    run the whole pipeline locally on a sample song
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
TEST_PROCESSES ?= 2
# the tiers' markers are set by the fixtures (tests/conftest.py), never by hand
FAST_TIER := not demucs and not rest_process and not browser

.PHONY: setup test test-fast lint clean

# torch is installed first and alone, pinned: 2.13.0 is the CPU-only build, which pip takes from
# the local package index where one is configured; any other version, or torch pulled in by
# Demucs, would download a CUDA build of several GB (README "Real weights").
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing torch 2.13.0 (CPU build), then Demucs and the project's tools into $(VENV)"
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[demucs,rest,test,deploy]'
	@touch $@

setup: $(VENV)/.installed
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null || { echo "redis-server is missing and could not be installed"; exit 1; }
	@/sbin/ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal || { \
	  echo "installing libtcmalloc-minimal4 (Demucs runs with it: DEMUCS_ALLOCATOR)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; }; } || true
	@/sbin/ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal || echo "note: libtcmalloc-minimal4" \
	  "could not be installed: Demucs runs with the system's malloc (slower, more memory)" \
	  "and tests/test_allocator.py skips"
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (only the page's browser test uses it)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; }; } || true
	@command -v chromium >/dev/null || echo "note: chromium could not be installed (apt-get with" \
	  "root or sudo is needed): tests/test_page_browser.py will skip; everything else works"
	@command -v jq >/dev/null || { \
	  echo "installing jq (README's try-it commands use it; so does their test)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q jq curl >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q jq curl >/dev/null 2>&1; }; } || true
	@command -v jq >/dev/null || echo "note: jq could not be installed: README's try-it test will skip"

test: setup
	$(PY) -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n $(TEST_PROCESSES) -m "$(FAST_TIER)" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- benchmarks (bench/run.py; figures in docs/benchmarks.md) ---
.PHONY: bench bench-quick bench-long
bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: setup
	$(PY) -m bench.run --quick $(BENCH_ARGS)

# -- Deployment: images and Kubernetes (deploy/; docs/deploy.md) -----------------------------
#   make images REGISTRY=... TAG=...    build both images (a Docker engine is needed)
#   make push-images                    push them
#   make deploy | deploy-gpu [KEDA=1]   apply overlays/local | overlays/gpu with those images
#   make undeploy [OVERLAY=gpu]         delete everything, Redis' and MinIO's volumes included
#   make port-forward                   REST :5000, MinIO :9000 and console :9001, Redis :6379
#   make lint-deploy                    render, validate and lint it all offline (CI)
REGISTRY ?= localhost:5001
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
KEDA ?= 0
OVERLAY ?= local
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(VENV)/bin/kubectl)
APPLY = WORKER_IMAGE=$(REGISTRY)/demucs-worker:$(TAG) REST_IMAGE=$(REGISTRY)/demucs-rest:$(TAG) \
	KEDA=$(KEDA) KUBECTL=$(KUBECTL) deploy/apply.sh

.PHONY: images push-images deploy deploy-gpu undeploy port-forward lint-deploy

images:
	$(MAKE) -C worker build REGISTRY=$(REGISTRY) TAG=$(TAG)
	$(MAKE) -C rest build REGISTRY=$(REGISTRY) TAG=$(TAG)

push-images:
	$(MAKE) -C worker push REGISTRY=$(REGISTRY) TAG=$(TAG)
	$(MAKE) -C rest push REGISTRY=$(REGISTRY) TAG=$(TAG)

deploy:
	$(APPLY) local

deploy-gpu:
	$(APPLY) gpu

undeploy:
	$(APPLY) --delete $(OVERLAY)

port-forward:
	@KUBECTL=$(KUBECTL) deploy/port-forward.sh

lint-deploy: $(VENV)/.installed
	deploy/lint.sh

# --- reliability suite (tests/reliability; `make test` runs it with 3 trials) ---
.PHONY: test-reliability
test-reliability: setup
	RELIABILITY_TRIALS=20 $(PY) -m pytest tests/reliability $(PYTEST_ARGS)

# --- the soak (bench/soak.py; docs/reliability.md): mixed requests under faults, then a
#     checker over the whole history; exits 1 on any violation. `make test` runs 2 minutes.
.PHONY: soak
SOAK_MINUTES ?= 15
soak: setup
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# --- model weights (worker/demucs/weights.py; docs/models.md) ---
#   make models [MODELS_FILE=registry.json]   download each weight file the registry lists and
#                                             lacks, once, kept only if its SHA-256 matches
.PHONY: models
MODELS_FILE ?= deploy/base/models.json
models: setup
	MODELS_FILE=$(MODELS_FILE) $(PY) -m worker.demucs.weights fetch

# --- the local demo (devstack/demo.py; README "Quick start") ---
#   make demo [DEMUCS_MODEL=...] [DEMUCS_REPO=dir] [DEMO_SONG=song.mp3] [DEMO_EXIT=1]
#   make stop                            stops a demo started in another terminal
.PHONY: demo stop
DEMO_EXIT ?=
demo: setup
	DEMO_EXIT=$(DEMO_EXIT) $(PY) -m devstack.demo

stop:
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m devstack.demo stop

bench-long: setup
	$(PY) -m bench.long_songs $(BENCH_ARGS)
