# NeuroScan: `make run` (embedded API + worker) and `make test` on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall only when the requirements or the package metadata change.
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements/api.txt requirements/worker.txt requirements/dev.txt pyproject.toml

.PHONY: help venv run test test-compose bench bench-all lint flower chaos

help:
	@echo "make run     start the API and a worker on the embedded defaults (PORT=8000)"
	@echo "make test    start PostgreSQL/Redis if needed, run the whole test suite"
	@echo "make bench   throughput and latency measures in one run (~5 min): bench/results/bench.json, docs/bench.png, README table"
	@echo "make bench-all  that, then Grad-CAM overhead, pipeline, training and load benchmarks (JSON in bench/results)"
	@echo "make lint    ruff"
	@echo "make test-compose  docker compose up from the Dockerfiles, a 20-scan batch, a worker killed mid-batch"
	@echo "make chaos   the full-stack fault tests alone, printing their timings (README, Guarantees)"
	@echo "make flower  Flower on BROKER_URL with basic auth (FLOWER_USER, FLOWER_PASSWORD)"

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(REQUIREMENTS)
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(VENV)/bin/neuroscan serve

test: venv
	scripts/ensure_services.sh
	$(VENV)/bin/pytest

# Installs Docker if missing, builds the images, runs the stack (scripts/compose_smoke.sh).
test-compose: venv
	scripts/compose_smoke.sh

bench: venv
	scripts/ensure_services.sh
	$(PY) -m bench.run

bench-all: bench
	$(PY) -m bench.gradcam_overhead
	$(PY) -m bench.pipeline_throughput
	$(PY) -m bench.train_throughput
	$(PY) -m bench.load
	$(PY) -m bench.huge_images
	$(PY) -m bench.hostile_rss

chaos: venv
	scripts/ensure_services.sh
	set -o pipefail; $(VENV)/bin/pytest -s -p no:cacheprovider tests/integration/test_faults.py \
		tests/integration/test_webhook_outbox.py | grep -E '^FAULT|passed|failed'

lint: venv node_modules/.package-lock.json
	$(VENV)/bin/ruff check .
	node_modules/.bin/eslint api/web

# ESLint for the page's scripts, pinned in package-lock.json; installed when missing.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

flower: venv
	$(VENV)/bin/celery --broker="$${BROKER_URL:-redis://127.0.0.1:6379/0}" flower \
		--port="$${FLOWER_PORT:-5555}" \
		--basic-auth="$${FLOWER_USER:-admin}:$${FLOWER_PASSWORD:?set FLOWER_PASSWORD}"
