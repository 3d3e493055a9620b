# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv in the repo root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch comes first and pinned: the CPU build that lies on this machine's disk (a bare `torch` pulls CUDA).
TORCH := torch==2.13.0

.PHONY: demo test test-all reliability audit accuracy lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/ulpt demo

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-all: lint
	$(BIN)/pytest -m "slow or not slow"

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
