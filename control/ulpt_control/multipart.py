"""`multipart/form-data` bodies (what OpenAI's client sends to `/v1/files`), read from the spooled body a
chunk at a time: the file part is copied to a file of its own, text fields are kept (256 characters
each), nothing is executed, and memory stays one chunk whatever the upload's size. Each part's headers
are parsed by the standard library's MIME parser."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import IO

from ulpt.errors import SpecError

CHUNK = 1 << 20
MAX_PART_HEADERS = 16 << 10
MAX_FIELD_CHARS = 256


@dataclass(frozen=True)
class Form:
    fields: dict[str, str]
    filename: str | None
    has_file: bool


def boundary_of(content_type: str) -> bytes:
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise SpecError("the body is not multipart/form-data with a boundary")
    return boundary.encode("latin-1")


def parse_form(body: IO[bytes], content_type: str, target: IO[bytes], file_field: str = "file") -> Form:
    """The form's text fields and the name of its `file_field` part, whose bytes go to `target`."""
    reader = _Parts(body, boundary_of(content_type))
    fields: dict[str, str] = {}
    filename, has_file = None, False
    while (headers := reader.next_part()) is not None:
        part = BytesParser(policy=HTTP).parsebytes(headers + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if name == file_field and not has_file:
            raw_name = part.get_filename()
            filename, has_file = (raw_name if isinstance(raw_name, str) else None), True
            reader.copy_part(target.write)
        else:
            kept = _Head(MAX_FIELD_CHARS * 4)
            reader.copy_part(kept.write)
            if isinstance(name, str):
                fields[name] = bytes(kept.data).decode("utf-8", "replace")[:MAX_FIELD_CHARS]
    target.flush()
    return Form(fields, filename, has_file)


class _Head:
    """The first `most` bytes written to it (a text field: the rest is dropped, not held)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data.extend(data[: self.most - len(self.data)])


class _Parts:
    """The body as a sequence of parts between `--boundary` lines, read a chunk at a time."""

    def __init__(self, body: IO[bytes], boundary: bytes) -> None:
        self.body = body
        self.delimiter = b"\r\n--" + boundary
        self.buffer = b"\r\n"  # the first delimiter starts the body, without its line break
        self.done = False

    def _fill(self) -> bool:
        chunk = self.body.read(CHUNK)
        self.buffer += chunk
        return bool(chunk)

    def next_part(self) -> bytes | None:
        """The headers of the next part (the delimiter line consumed), or None after the last."""
        if self.done:
            return None
        while True:  # the delimiter line, then the part's headers up to their blank line
            start = self.buffer.find(self.delimiter)
            if start >= 0:
                rest = self.buffer[start + len(self.delimiter) :]
                if len(rest) >= 2 and rest[:2] == b"--":
                    self.done = True
                    return None
                end = rest.find(b"\r\n\r\n")
                if end >= 0:
                    headers = rest[:end].removeprefix(b"\r\n")
                    self.buffer = rest[end + 4 :]
                    return headers
                if len(rest) > MAX_PART_HEADERS:
                    raise SpecError("a part of the form has headers too long")
            elif len(self.buffer) > MAX_PART_HEADERS + len(self.delimiter):
                self.buffer = self.buffer[-len(self.delimiter) :]  # preamble: skipped
            if not self._fill():
                raise SpecError("the multipart body ends before its closing boundary")

    def copy_part(self, write: Callable[[bytes], object]) -> None:
        """Hand the part's bytes up to the next delimiter to `write`, a chunk at a time."""
        keep = len(self.delimiter)
        while True:
            end = self.buffer.find(self.delimiter)
            if end >= 0:
                write(self.buffer[:end])
                self.buffer = self.buffer[end:]
                return
            if len(self.buffer) > keep:
                write(self.buffer[:-keep])
                self.buffer = self.buffer[-keep:]
            if not self._fill():
                raise SpecError("the multipart body ends before its closing boundary")
