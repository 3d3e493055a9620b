"""The capped body reader both HTTP layers use: a body over the limit is refused with 413, whether its
length is declared or it streams in chunks, in the caller's own error type and words; one within the
limit arrives whole."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import Request

from ulpt_control.errors import ApiError as ControlError
from ulpt_serving.admission import MAX_BODY_BYTES
from ulpt_serving.bodies import read_body
from ulpt_serving.protocol import ApiError as ServingError


def _request(chunks: list[bytes], declare: bool) -> Request:
    headers = [(b"content-length", str(sum(map(len, chunks))).encode())] if declare else []
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return messages[len(received) - 1]

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)
    request.state.received = received  # how many messages were read off the wire
    return request


@pytest.mark.parametrize("declare", [True, False])
def test_a_body_within_the_limit_arrives_whole(declare: bool) -> None:
    chunks = [b"a" * 40, b"b" * 40, b"c" * 20]
    assert asyncio.run(read_body(_request(chunks, declare), 100, ServingError)) == b"".join(chunks)


def test_a_declared_oversized_body_is_refused_before_a_byte_is_read() -> None:
    request = _request([b"x" * (MAX_BODY_BYTES + 1)], declare=True)
    with pytest.raises(ServingError) as refused:
        asyncio.run(read_body(request, MAX_BODY_BYTES, ServingError))
    assert refused.value.status == 413
    assert refused.value.message == f"the request body is larger than {MAX_BODY_BYTES} bytes"
    assert request.state.received == []


def test_a_streamed_oversized_body_is_refused_once_it_passes_the_limit() -> None:
    request = _request([b"x" * 60] * 10, declare=False)
    with pytest.raises(ControlError) as refused:
        asyncio.run(read_body(request, 100, ControlError, "job spec"))
    assert (refused.value.status, refused.value.message) == (413, "the job spec is larger than 100 bytes")
    assert len(request.state.received) == 2  # stopped at the chunk that crossed 100 bytes
