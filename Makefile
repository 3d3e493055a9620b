# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv in the repo root
# and install it from the locks in requirements/ (exact versions, every file checked by SHA-256).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned outside the locks: here the CPU build that lies on this
# machine's disk (a bare `torch` pulls CUDA); the CUDA image installs torch==2.13.0 the same way
# and takes the same locks for everything else.
TORCH := torch==2.13.0
RUNTIME_LOCK := requirements/runtime.txt
TEST_LOCK := requirements/test.txt
PIP_LOCKED := $(BIN)/pip install -q --require-hashes
# Where `make lock` finds the CPU torch wheel whose dependencies the locks are resolved against.
TORCH_WHEELS ?= /opt/wheels
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) \
	--override requirements/torch-cpu.txt --no-emit-package torch $(if $(UPGRADE),--upgrade)

.PHONY: demo demo-smoke test test-all reliability audit accuracy lint lock install install-test clean schema screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python $(RUNTIME_LOCK) pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(PIP_LOCKED) -r $(RUNTIME_LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed $(TEST_LOCK)
	$(PIP_LOCKED) -r $(TEST_LOCK)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/ulpt demo

# The demo's path at a few steps (minutes): what CI runs in a venv built from the runtime lock alone.
demo-smoke: install
	$(BIN)/ulpt demo --smoke

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The published JSON Schema of job spec files, generated from the JobSpec model, and the control
# plane's OpenAPI schema, generated from its routes (tests compare both with the committed files).
schema: install
	$(BIN)/python -c "import json, ulpt.jobspec as j; print(json.dumps(j.json_schema(), indent=2))" \
		> docs/jobspec.schema.json
	$(BIN)/python -m ulpt_control openapi > docs/control.openapi.json

test: lint
	$(BIN)/pytest

test-all: lint
	$(BIN)/pytest -m "slow or not slow"

# The console's screenshots in docs/console/ (shown in the README), taken by its browser tests.
screenshots: install-test
	ULPT_CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest -q -m "slow or not slow" tests/console

# Re-resolve both locks from pyproject.toml's ranges after changing a dependency (pins that still
# fit are kept); `make lock UPGRADE=1` takes the newest releases the ranges allow. The test lock is
# constrained by the runtime lock, so both install the same versions.
lock: install-test
	$(UV_COMPILE) -o $(RUNTIME_LOCK)
	$(UV_COMPILE) --extra dev -c $(RUNTIME_LOCK) -o $(TEST_LOCK)

# The reliability suite at full size (slow tier included, capped at an hour), then docs/reliability.md.
reliability: install-test
	$(BIN)/python benchmarks/reliability.py

# ULPT vs PT, DPT, LoPT and the ablations on SmolLM2 and BIG-bench (70-85 min), then docs/accuracy.md.
accuracy: install
	$(BIN)/python benchmarks/accuracy.py

# Known vulnerabilities of the installed dependencies: fails on one, warns on what it could not audit.
audit: install-test
	$(BIN)/python benchmarks/audit.py

clean:
	rm -rf $(VENV) .ulpt .pytest_cache .mypy_cache .ruff_cache
