"""Where BIG-bench task files come from: an optional source, tried in order, every file hash-checked.

BIG-bench is not on ulpt's default path (the demo, its smoke and CI run on `ulpt.data.generated`):
the sdist `bigbench==1.0.0` that used to carry its ~1,000 JSON tasks is no longer listed by the
package index. A task's `task.json` is looked for, in order, in
1. the cache, `<ULPT_HOME>/cache/bigbench/tasks/<task>/task.json` (files that passed the checks below);
2. `$ULPT_BIGBENCH`: the sdist, a tarball of the repository, or a checkout of it;
3. the repository's archive at the commit pinned in the hash list,
the last only when `remote=True`: a person asked for it (`ulpt data bigbench`, a benchmark's
`--fetch-bigbench`); a server never fetches on a tenant's request. When none works, one line says
what was tried and how to provide the data.

Every file is checked against `bigbench_tasks.sha256` beside this module (an archive's bytes are not
stable, its files are). The pinned sdist is verified as a whole by its own SHA-256, so a task it holds
is accepted even when the list has no line for it; from any other source a task must be listed.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ulpt.config import atomic_write_bytes, atomic_writer, file_lock, ulpt_home
from ulpt.errors import DataError, redact_url

SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
ARCHIVE_URL = "https://github.com/google/BIG-bench/archive/{commit}.tar.gz"
HASH_LIST = Path(__file__).with_name("bigbench_tasks.sha256")
TASKS_DIR = "bigbench/benchmark_tasks/"
TASK_FILE = "task.json"
ENV_SOURCE = "ULPT_BIGBENCH"
HOW_TO_PROVIDE = (
    f"set {ENV_SOURCE} to the bigbench-1.0.0 sdist, a tarball or a checkout of the BIG-bench repository "
    "(nothing is fetched from a package index: the sdist is no longer listed there)"
)


def cache_dir(home: Path | None = None) -> Path:
    """Where the sdist, the task index and the checked task files live."""
    return (Path(home).absolute() if home is not None else ulpt_home()) / "cache" / "bigbench"


@dataclass(frozen=True)
class HashList:
    """The SHA-256 of each known task file, and the repository commit they were recorded at."""

    sha256: dict[str, str]
    commit: str | None

    @classmethod
    def read(cls, path: Path = HASH_LIST) -> HashList:
        """Lines `<sha256>  <task>`; a `# commit: <sha>` line pins the repository archive."""
        hashes: dict[str, str] = {}
        commit = None
        for line in path.read_text().splitlines() if path.is_file() else []:
            if line.startswith("# commit:"):
                commit = line.split(":", 1)[1].strip() or None
            elif line.strip() and not line.startswith("#"):
                digest, task = line.split(maxsplit=1)
                hashes[task.strip()] = digest
        return cls(hashes, commit)

    def check(self, task: str, data: bytes, origin: str, trusted_archive: bool) -> None:
        """Refuse a file whose SHA-256 differs from its line, or an unlisted one from an unpinned source."""
        digest = hashlib.sha256(data).hexdigest()
        expected = self.sha256.get(task)
        if expected is not None and digest != expected:
            raise DataError(
                f"BIG-bench task {task!r} from {origin} has SHA-256 {digest}, expected {expected}"
            )
        if expected is None and not trusted_archive:
            raise DataError(
                f"BIG-bench task {task!r} from {origin} has no SHA-256 in {HASH_LIST.name}: refused "
                "(only the pinned sdist is trusted for unlisted tasks)"
            )


def task_of_member(member_name: str) -> str | None:
    """The task name of an archive member `.../bigbench/benchmark_tasks/<task>/task.json`, else None.

    Raises DataError for a member whose path would leave the task folder (absolute, `..`, odd
    characters): an archive containing one is refused outright.
    """
    from ulpt.data.bigbench import is_safe_task_name

    _, sep, rest = member_name.partition(TASKS_DIR)
    if not sep or not rest.endswith("/" + TASK_FILE):
        return None
    task = rest[: -len("/" + TASK_FILE)]
    if not is_safe_task_name(task) or member_name.startswith("/") or ".." in member_name.split("/"):
        raise DataError(f"refusing unsafe archive member {member_name!r}")
    return task


def _archive_files(archive: Path, wanted: set[str] | None) -> Iterator[tuple[str, bytes]]:
    """(task, task.json bytes) for the wanted tasks (all when None), in one pass over the archive."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                task = task_of_member(member.name)
                if task is None or (wanted is not None and task not in wanted):
                    continue
                if not member.isfile():
                    raise DataError(f"refusing archive member {member.name!r}: not a regular file")
                handle = tar.extractfile(member)
                if handle is None:
                    raise DataError(f"cannot read archive member {member.name!r}")
                yield task, handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {archive.name} as a tar archive ({exc})") from None


def _checkout_files(folder: Path, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    root = folder / TASKS_DIR if (folder / TASKS_DIR).is_dir() else folder / "benchmark_tasks"
    for task in wanted:
        path = root / task / TASK_FILE
        if path.is_file() and not path.is_symlink():
            yield task, path.read_bytes()


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Sources:
    """The sources of one call, tried in order, each leaving a note of what it found."""

    def __init__(self, home: Path | None, remote: bool, hashes: HashList) -> None:
        self.home, self.remote, self.hashes = home, remote, hashes
        self.tried: list[str] = []

    def fill(self, missing: list[str], folder: Path) -> list[str]:
        """Write each missing task's checked file into `folder`; returns the tasks still missing."""
        for origin, files, trusted in self._candidates(missing):
            found = 0
            for task, data in files:
                if task in missing:
                    self.hashes.check(task, data, origin, trusted)
                    atomic_write_bytes(folder / task / TASK_FILE, data)
                    missing = [t for t in missing if t != task]
                    found += 1
            self.tried.append(f"{origin}: {found} found")
            if not missing:
                break
        return missing

    def _candidates(self, tasks: list[str]) -> Iterator[tuple[str, Iterable[tuple[str, bytes]], bool]]:
        local = os.environ.get(ENV_SOURCE, "").strip()
        if local:
            path = Path(local).expanduser()
            if path.is_dir():
                yield f"{ENV_SOURCE} checkout {path.name}", _checkout_files(path, tasks), False
            elif path.is_file():
                pinned = _sha256_of_file(path) == SDIST_SHA256
                yield f"{ENV_SOURCE} archive {path.name}", _archive_files(path, set(tasks)), pinned
            else:
                self.tried.append(f"{ENV_SOURCE}: no such file or folder {path.name!r}")
        else:
            self.tried.append(f"{ENV_SOURCE}: not set")
        if not self.remote:
            self.tried.append("remote sources: not asked for")
            return
        if self.hashes.commit is None:
            self.tried.append(f"the repository archive: no commit pinned in {HASH_LIST.name}")
            return
        archive = cache_dir(self.home) / f"BIG-bench-{self.hashes.commit}.tar.gz"
        try:
            if not archive.is_file():
                fetch_url(ARCHIVE_URL.format(commit=self.hashes.commit), archive)
            yield (
                f"the repository archive at {self.hashes.commit[:12]}",
                _archive_files(archive, set(tasks)),
                False,
            )
        except DataError as exc:
            self.tried.append(f"the repository archive: {exc}")


def fetch_url(url: str, dest: Path) -> Path:
    """Download `url` to `dest` atomically (the caller checks each file it reads against the hash list).

    Only where a person asked for BIG-bench; a message never shows a URL's credentials."""
    if urlsplit(url).scheme != "https":
        raise DataError(f"refusing to fetch {redact_url(url)!r}: not an https URL")
    try:
        with atomic_writer(dest) as out, urllib.request.urlopen(url, timeout=180) as answer:  # noqa: S310
            while chunk := answer.read(1 << 20):
                out.write(chunk)
    except OSError as exc:
        raise DataError(f"cannot fetch {redact_url(url)}: {exc}") from None
    return dest


def fetch_task_files(
    names: Iterable[str], home: Path | None = None, remote: bool = False, hashes: HashList | None = None
) -> dict[str, Path]:
    """The checked, cached task.json of every named task, from the first source that has it.

    `remote=False` (every server path) never leaves the machine; raises DataError in one line naming
    each source tried and how to provide the data when a task is found nowhere. `hashes` defaults to
    the list shipped beside this module.
    """
    from ulpt.data.bigbench import is_safe_task_name

    names = list(dict.fromkeys(names))
    for name in names:
        if not is_safe_task_name(name):
            raise DataError(f"invalid BIG-bench task name {name!r}")
    folder = cache_dir(home) / "tasks"
    paths = {name: folder / name / TASK_FILE for name in names}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        with file_lock(cache_dir(home) / ".extract.lock"):
            missing = [n for n in missing if not paths[n].is_file()]
            if missing:
                sources = _Sources(home, remote, hashes or HashList.read())
                still = sources.fill(missing, folder)
                if still:
                    raise DataError(
                        f"BIG-bench task {still[0]!r} was found nowhere (tried: {'; '.join(sources.tried)}); "
                        + HOW_TO_PROVIDE
                        + ("" if remote else ", or run `ulpt data bigbench TASK` to fetch it")
                    )
    return paths


def record_hashes(source: Path, commit: str | None, out: Path = HASH_LIST) -> int:
    """Write the hash list from a local checkout or archive a maintainer trusts; returns the count."""
    files: Iterable[tuple[str, bytes]]
    if source.is_dir():
        root = source / TASKS_DIR
        files = ((str(p.parent.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob(TASK_FILE)))
    else:
        files = _archive_files(source, None)
    lines = sorted(f"{hashlib.sha256(data).hexdigest()}  {task}" for task, data in files)
    header = "# SHA-256 of each BIG-bench task.json (ulpt.data.bigbench_sources); tools/bigbench_hashes.py\n"
    pin = f"# commit: {commit}\n" if commit else ""
    atomic_write_bytes(out, (header + pin + "".join(line + "\n" for line in lines)).encode())
    return len(lines)
