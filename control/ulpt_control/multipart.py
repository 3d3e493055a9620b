"""`multipart/form-data` bodies (what OpenAI's client sends to `/v1/files`), parsed with the standard
library's MIME parser after the size check: text fields and one file's bytes, nothing executed."""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from ulpt.errors import SpecError


@dataclass(frozen=True)
class Form:
    fields: dict[str, str]
    filename: str | None
    content: bytes | None


def parse_form(body: bytes, content_type: str, file_field: str = "file") -> Form:
    """The form's text fields and the bytes and name of its `file_field` part."""
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise SpecError("the body is not multipart/form-data")
    fields: dict[str, str] = {}
    filename, content = None, None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == file_field:
            raw_name = part.get_filename()
            filename, content = (raw_name if isinstance(raw_name, str) else None), data
        else:
            fields[name] = data.decode("utf-8", "replace")[:256]
    return Form(fields, filename, content)
