"""Data files a tenant uploads over HTTP, for jobs to train on: checked, stored as blobs, recorded.

Only JSON lines are accepted (one JSON object per line): nothing a client sends is ever unpickled or
run, and a file is parsed once, here, before it is stored. `purpose="fine-tune"` also requires the
rows OpenAI's fine-tuning takes (`{"prompt", "completion"}` or chat `{"messages": [...]}`).
"""

from __future__ import annotations

import builtins
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulpt.catalog.files import add_file, delete_file, file_usage, get_file, list_files
from ulpt.catalog.models import FileRow
from ulpt.documents import load_json
from ulpt.errors import DataError, SpecError

if TYPE_CHECKING:
    from ulpt.registry.api import Registry

PURPOSES = ("data", "fine-tune")
MAX_FILENAME = 256


@dataclass(frozen=True)
class FileRecord:
    """An uploaded file as its owner sees it (no blob key, no store location)."""

    id: str
    filename: str
    purpose: str
    bytes: int
    rows: int
    sha256: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: FileRow) -> FileRecord:
        return cls(row.id, row.filename, row.purpose, row.size, row.rows, row.sha256, row.created_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "purpose": self.purpose,
            "bytes": self.bytes,
            "rows": self.rows,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat(),
        }


def parse_jsonl(data: bytes, purpose: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; DataError naming the first bad line."""
    rows = list(iter_rows(data.splitlines(), purpose))
    if not rows:
        raise DataError("the file has no rows")
    return rows


def iter_rows(lines: Iterable[bytes], purpose: str) -> Iterator[dict[str, Any]]:
    """Each line's row, checked as it is read (an upload is checked from its file, one line held at
    a time); DataError naming the first bad line."""
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"line {number} is not UTF-8 text (upload JSON lines)") from None
        if not line.strip():
            continue
        try:
            row = load_json(line, f"line {number}")
        except SpecError as exc:
            raise DataError(f"{exc} (upload one JSON object per line, finite numbers only)") from None
        if not isinstance(row, dict):
            raise DataError(f"line {number}: a JSON object is expected")
        if purpose == "fine-tune":
            check_fine_tune_row(row, number)
        yield row


def check_fine_tune_row(row: dict[str, Any], number: int) -> None:
    if "messages" in row:
        messages = row["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise DataError(f"line {number}: messages must be a list of {{role, content}} strings")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"line {number}: the last message must be the assistant's (the target)")
        return
    if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
        raise DataError(f'line {number}: give {{"prompt", "completion"}} strings or {{"messages": [...]}}')


class Files:
    """One tenant's uploaded files; another tenant's file id reads exactly like one that does not exist."""

    def __init__(self, registry: Registry, tenant: str) -> None:
        self._registry = registry
        self.tenant = tenant

    def upload(self, data: bytes, *, filename: str, purpose: str = "data") -> FileRecord:
        """Check the rows, store the bytes (content-addressed) and record the file."""
        with tempfile.NamedTemporaryFile(prefix="ulpt-upload-") as copy:
            copy.write(data)
            copy.flush()
            return self.upload_file(Path(copy.name), filename=filename, purpose=purpose)

    def upload_file(self, path: Path, *, filename: str, purpose: str = "data") -> FileRecord:
        """`upload` from a file, in memory that does not grow with it: the rows are checked one line
        at a time and the bytes stream to the store."""
        if purpose not in PURPOSES:
            raise SpecError(f"purpose: one of {', '.join(PURPOSES)}")
        name = Path(filename or "upload.jsonl").name[:MAX_FILENAME] or "upload.jsonl"
        with open(path, "rb") as lines:
            rows = sum(1 for _ in iter_rows(lines, purpose))
        if not rows:
            raise DataError("the file has no rows")
        info = self._registry.store.put_file(path)
        with self._registry.catalog.session() as session:
            row = add_file(
                session,
                self.tenant,
                filename=name,
                purpose=purpose,
                size=info.size,
                blob_key=info.key,
                sha256=info.sha256,
                rows=rows,
            )
            return FileRecord.from_row(row)

    def get(self, file_id: str) -> FileRecord:
        with self._registry.catalog.read() as session:
            return FileRecord.from_row(get_file(session, self.tenant, file_id))

    def list(
        self, *, purpose: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[FileRecord]:
        """Newest first; `after` a file id: the page after it."""
        with self._registry.catalog.read() as session:
            found = list_files(session, self.tenant, purpose=purpose, limit=limit, after=after)
            return [FileRecord.from_row(r) for r in found]

    def usage(self) -> tuple[int, int]:
        """(files, bytes) the tenant keeps: what its upload limits count."""
        with self._registry.catalog.read() as session:
            return file_usage(session, self.tenant)

    def content(self, file_id: str) -> bytes:
        """The file's bytes, checked against their SHA-256."""
        with self._registry.catalog.read() as session:
            row = get_file(session, self.tenant, file_id)
            key, sha256 = row.blob_key, row.sha256
        return self._registry.store.get(key, sha256)

    def rows(self, file_id: str) -> builtins.list[dict[str, Any]]:
        record = self.get(file_id)
        return parse_jsonl(self.content(file_id), record.purpose)

    def delete(self, file_id: str) -> FileRecord:
        with self._registry.catalog.session() as session:
            return FileRecord.from_row(delete_file(session, self.tenant, file_id))
