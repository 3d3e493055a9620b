"""BIG-bench JSON tasks, read from the PyPI sdist `bigbench==1.0.0` (Apache-2.0).

No dataset hub is reachable, but the sdist holds all ~1,000 JSON tasks. We download it once
(358 MB) into `<ULPT_HOME>/cache/bigbench/`, and extract only the `task.json` files a caller asks
for, streaming through the archive with strict member checks. Examples are formatted the way
BIG-bench's own `default_format_fn` does it (task prefix, "Q:"/"A:" style prefixes, choices), so
that a row's `input` ends exactly where the model should write the answer.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
import re
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, Value
from datasets import Sequence as DsSequence

from ulpt.config import atomic_write_bytes, file_lock, ulpt_home
from ulpt.data.pypi import download
from ulpt.errors import DataError

SDIST_PROJECT = "bigbench"
SDIST_FILE = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS_DIR = "bigbench/benchmark_tasks/"
TASK_FILE = "task.json"
FEATURES = Features(
    {"input": Value("string"), "target": Value("string"), "choices": DsSequence(Value("string"))}
)
# BIG-bench defaults (bigbench/api/json_task.py) for keys a task.json may omit.
DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "
BIGBENCH_SEED = 42  # JsonTask's default random_seed, which orders the choices listed in the input
_SAFE_PART = re.compile(r"[A-Za-z0-9_.+-]+")


def cache_dir(home: Path | None = None) -> Path:
    """Where the sdist, the task index and the extracted task files live."""
    return (Path(home).absolute() if home is not None else ulpt_home()) / "cache" / "bigbench"


def fetch_sdist(home: Path | None = None) -> Path:
    """Return the cached sdist, downloading it from the package index once (SHA-256 pinned)."""
    folder = cache_dir(home)
    archive = folder / SDIST_FILE
    if archive.is_file():
        return archive
    with file_lock(folder / ".sdist.lock"):
        if archive.is_file():
            return archive
        print(f"Downloading {SDIST_FILE} from the package index (358 MB, once)", file=sys.stderr, flush=True)
        download(SDIST_PROJECT, SDIST_FILE, SDIST_SHA256, archive)
    return archive


def task_of_member(member_name: str) -> str | None:
    """The task name of an archive member `.../bigbench/benchmark_tasks/<task>/task.json`, else None.

    Raises DataError for a member whose path would leave the task folder (absolute, `..`, odd
    characters): an archive containing one is refused outright.
    """
    _, sep, rest = member_name.partition(TASKS_DIR)
    if not sep or not rest.endswith("/" + TASK_FILE):
        return None
    task = rest[: -len("/" + TASK_FILE)]
    if not is_safe_task_name(task) or member_name.startswith("/") or ".." in member_name.split("/"):
        raise DataError(f"refusing unsafe archive member {member_name!r}")
    return task


def is_safe_task_name(task: str) -> bool:
    """A relative path of plain components (no `..`, no absolute path, no odd characters)."""
    parts = task.split("/")
    return bool(task) and all(_SAFE_PART.fullmatch(p) and p not in (".", "..") for p in parts)


def leaf_tasks(task_names: Iterable[str]) -> list[str]:
    """Drop parent tasks: a folder whose subfolders are tasks only holds metadata, no examples."""
    names = set(task_names)
    parents = {posixpath.dirname(n) for n in names} - {""}
    return sorted(names - parents)


def extract_task_files(archive: Path, tasks: Iterable[str], dest: Path) -> dict[str, Path]:
    """Stream through `archive` once and write each requested task's task.json to
    `dest/<task>/task.json`. Only regular-file members are read; unsafe members are refused."""
    wanted = set(tasks)
    for name in wanted:
        if not is_safe_task_name(name):
            raise DataError(f"invalid task name {name!r}")
    root = dest.absolute()
    done: dict[str, Path] = {}
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar:
            task = task_of_member(member.name)
            if task is None or task not in wanted or task in done:
                continue
            if not member.isfile():
                raise DataError(f"refusing archive member {member.name!r}: not a regular file")
            target = (root / task / TASK_FILE).resolve()
            if not target.is_relative_to(root.resolve()):
                raise DataError(f"refusing archive member {member.name!r}: it would leave {root}")
            handle = tar.extractfile(member)
            if handle is None:
                raise DataError(f"cannot read archive member {member.name!r}")
            atomic_write_bytes(target, handle.read())
            done[task] = target
            if len(done) == len(wanted):
                break
    return done


def list_tasks(home: Path | None = None) -> list[str]:
    """All BIG-bench JSON tasks with examples, e.g. `multiemo/reviews_sentence_en`.

    The first call reads the archive's member names (~5 s) and caches them as a text index.
    """
    index = cache_dir(home) / "tasks.txt"
    if not index.is_file():
        archive = fetch_sdist(home)
        with tarfile.open(archive, mode="r:gz") as tar:
            found = {t for m in tar if (t := task_of_member(m.name)) is not None}
        atomic_write_bytes(index, "".join(f"{t}\n" for t in leaf_tasks(found)).encode())
    return index.read_text().split()


def task_path(name: str, home: Path | None = None) -> Path:
    """The cached task.json of `name`, extracted from the sdist on first use."""
    return prefetch_tasks([name], home)[name]


def prefetch_tasks(names: Iterable[str], home: Path | None = None) -> dict[str, Path]:
    """Make sure the task.json of every named task is cached, extracting all missing ones in a
    single pass over the archive (each pass decompresses up to ~5 s of it)."""
    folder = cache_dir(home) / "tasks"
    paths = {name: folder / name / TASK_FILE for name in names}
    missing = [n for n, p in paths.items() if not (is_safe_task_name(n) and p.is_file())]
    if missing:
        known = set(list_tasks(home))
        for name in missing:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else "; see list_tasks()"
                raise DataError(f"unknown BIG-bench task {name!r}{hint}")
        with file_lock(cache_dir(home) / ".extract.lock"):
            still = [n for n in missing if not paths[n].is_file()]
            if still:
                found = extract_task_files(fetch_sdist(home), still, folder)
                if lost := sorted(set(still) - set(found)):
                    raise DataError(f"BIG-bench tasks {lost} are listed but missing from the archive")
    return paths


def load_task(name: str, home: Path | None = None, append_choices: bool | None = None) -> Dataset:
    """A BIG-bench task as a Dataset with columns `input`, `target`, `choices`.

    `input` ends where the answer starts (e.g. "...\\nA:"), `target` has no leading space (see
    `answer_text`), `choices` are the target_scores keys ([] for free-form tasks).
    `append_choices=None` follows the task's own `append_choices_to_input` setting.
    """
    try:
        task = json.loads(task_path(name, home).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"BIG-bench task {name!r} is not valid JSON: {err}") from err
    rows = format_examples(task, append_choices)
    if not rows:
        raise DataError(f"BIG-bench task {name!r} has no usable examples")
    return Dataset.from_list(rows, features=FEATURES)


def format_examples(task: Mapping[str, Any], append_choices: bool | None = None) -> list[dict[str, Any]]:
    """Format a parsed task.json like BIG-bench does; duplicate and unlabelled examples are dropped."""
    task_prefix = str(task.get("task_prefix", ""))
    input_prefix = str(task.get("example_input_prefix", DEFAULT_INPUT_PREFIX))
    output_prefix = str(task.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX))
    choice_prefix = str(task.get("choice_prefix", DEFAULT_CHOICE_PREFIX))
    if append_choices is None:
        append_choices = _as_bool(task.get("append_choices_to_input", True))
    # BIG-bench glues choices together when choice_prefix is "" (e.g. multiemo); those tasks
    # already name the options in their task_prefix, so listing them again adds only noise.
    append_choices = append_choices and bool(choice_prefix.strip())
    seen: set[str] = set()
    rows = []
    for example in task.get("examples", []):
        key = json.dumps(example, sort_keys=True)
        if key in seen or not isinstance(example, dict) or "input" not in example:
            continue
        seen.add(key)
        scores = example.get("target_scores") or {}
        choices = [str(c).strip() for c in scores]
        target = _label(scores, example.get("target"))
        if target is None:
            continue
        text = str(example["input"])
        if scores and append_choices:
            order = np.random.RandomState(seed=BIGBENCH_SEED).permutation(sorted(str(c) for c in scores))
            text += choice_prefix + choice_prefix.join(order)
        prompt = (task_prefix + input_prefix + text + output_prefix).lstrip().rstrip(" ")
        rows.append({"input": prompt, "target": target, "choices": choices})
    return rows


def _label(scores: Mapping[str, Any], target: Any) -> str | None:
    """The highest-scoring choice (first on ties, like BIG-bench), else the (first) target."""
    if scores:
        values = [float(v) for v in scores.values()]
        best = max(values)
        if best > min(values) or (len(values) == 1 and best > 0):
            return str(next(k for k, v in zip(scores, values, strict=True) if v == best)).strip()
    if isinstance(target, list):
        target = target[0] if target else None
    if target is None:
        return None
    return str(target).strip() or None


def _as_bool(value: Any) -> bool:
    # A few task.json files spell it as the string "false".
    return value.strip().lower() not in ("false", "0", "no", "") if isinstance(value, str) else bool(value)


def answer_text(input_text: str, target: str) -> str:
    """What the model should write after `input`: the target after one space, unless the
    input already ends a line or with whitespace."""
    return target if not input_text or input_text[-1].isspace() else " " + target


def split_rows(
    ds: Dataset | Sequence[Mapping[str, Any]], eval_fraction: float, test_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic (train, eval, test) lists of {input, target, choices}.

    Rows are ordered by a SHA-256 of (seed, index) rather than a PRNG, so the split is identical
    across Python, NumPy and platform versions. A positive fraction always gets at least one row.
    """
    if not (0 <= eval_fraction < 1 and 0 <= test_fraction < 1 and eval_fraction + test_fraction < 1):
        raise DataError(f"eval_fraction={eval_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                        "and sum to less than 1")  # fmt: skip
    rows = [{"input": r["input"], "target": r["target"], "choices": list(r.get("choices") or [])} for r in ds]
    n = len(rows)
    n_test = max(round(n * test_fraction), 1 if test_fraction > 0 else 0)
    n_eval = max(round(n * eval_fraction), 1 if eval_fraction > 0 else 0)
    if n - n_test - n_eval < 1:
        raise DataError(f"{n} rows are too few for eval {eval_fraction} and test {test_fraction} fractions")
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    shuffled = [rows[i] for i in order]
    return shuffled[n_test + n_eval :], shuffled[n_test : n_test + n_eval], shuffled[:n_test]
