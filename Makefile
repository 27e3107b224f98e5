# Two commands on a fresh machine: `make demo` (the main job, embedded defaults) and
# `make test` (every test tier). Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= worker,dev
PYTEST_ARGS ?=

.PHONY: install demo test test-unit test-integration lint format typecheck services bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned to 2.13.0 inside the 'worker' extra: one pip command, one resolution.
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@if $(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then \
		echo "torchvision got installed; it breaks transformers' processors with CPU torch" >&2; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/vr1 demo --out .vr1/demo

services:
	./scripts/ensure-services.sh

test: install services
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install services
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/reward.py
	$(BIN)/python bench/coldstart.py

clean:
	rm -rf .vr1 .pytest_cache .mypy_cache .ruff_cache
