"""An ASGI app on a real 127.0.0.1 socket in a thread, for tests that need real HTTP (browsers,
urllib clients) without Ray Serve."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serving(app: Any, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` on a free port; yields its base URL (http://127.0.0.1:PORT); stops it on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test HTTP server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def stalled_post(
    url: str, path: str, headers: dict[str, str], sent: bytes, declared: int, pause_s: float = 0.0
) -> tuple[int, bytes]:
    """POST that declares `declared` bytes of body and sends `sent`, in one go, or (`pause_s`) one byte
    at a time with that pause between bytes, reading the answer as soon as there is one: a client that
    stopped sending, or one that sends too slowly. Raw socket, so the test does not race its own
    client's writes against the server closing the connection. Returns (status, response body)."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {declared}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if pause_s else sent))
        for index in range(len(sent) if pause_s else 0):
            if select.select([sock], [], [], pause_s)[0]:
                break  # the server answered: read it
            sock.sendall(sent[index : index + 1])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
    status = int(received.split(b" ", 2)[1])
    return status, received.split(b"\r\n\r\n", 1)[1]


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False
