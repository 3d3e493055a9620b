"""Process-wide settings read from the environment.

Everything ulpt materializes locally (converted base models, downloaded data) lives under one
folder, so a user can relocate or wipe it in one place.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

DEFAULT_HOME = "./.ulpt"


def ulpt_home() -> Path:
    """The local cache root: `$ULPT_HOME`, or `./.ulpt` in the working directory.

    Made absolute at call time, so paths derived from it stay valid when handed to a Ray worker
    or a subprocess that runs elsewhere.
    """
    return Path(os.environ.get("ULPT_HOME") or DEFAULT_HOME).expanduser().absolute()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing).

    Several processes (Ray workers on one node, parallel tests) may fill the same cache at once;
    the lock makes the first one do the work while the others wait and then reuse it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only if the block ends without an error: written beside it
    and renamed, so readers never see half a file and a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (see `atomic_writer`)."""
    with atomic_writer(path) as handle:
        handle.write(data)


def ray_env_defaults() -> None:
    """A quiet, offline, token-less local Ray with short socket paths; never overrides the user's values.

    Ray 2.60 turns token auth on and writes ~/.ray/auth_token otherwise, and unix socket paths under
    a long temp folder exceed 107 bytes. Ray Train's controller polls its workers every 2 s by
    default, so a finished job waited up to 2 s more to return; at 0.2 s a poll is a few small actor
    calls five times a second.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if "RAY_TMPDIR" not in os.environ:
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")


LOCAL_RAY = "local"
"""The Ray address that always starts a private local Ray, even when a cluster runs on this machine."""


def running_ray_address() -> str | None:
    """The Ray to join when none was named: `$RAY_ADDRESS`, else the cluster `ray start --head` recorded
    on this machine if it answers, else None (start a private one).

    Starting Ray costs 5-20 s per job; a cluster started once with `ray start --head` is joined in
    well under a second. A recorded address that no longer answers (a cluster that died without
    `ray stop`) is ignored, so a stale file never makes a job hang.
    """
    named = os.environ.get("RAY_ADDRESS")
    if named:
        return named
    # Where `ray start` records it: $RAY_TMPDIR (or $TMPDIR, else /tmp) + /ray/ray_current_cluster
    root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    try:
        address = (Path(root) / "ray" / "ray_current_cluster").read_text().strip()
        host, port = address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=1).close()
    except (OSError, ValueError):
        return None
    return address


_ray_start_s: list[float] = []


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> float:
    """Connect to `address`, else to a running cluster (`running_ray_address`), else start a local Ray
    (with `num_cpus`, default this machine's CPUs); `address="local"` always starts a local one.

    Returns the seconds this process spent starting or joining Ray, 0 if it was running before this
    process asked (a job records it among its timings). The local default is quiet and offline
    (`ray_env_defaults`); the user's own RAY_* settings win.
    """
    import ray

    if ray.is_initialized():
        return _ray_start_s[0] if _ray_start_s else 0.0
    started = time.monotonic()
    if address is None:
        address = running_ray_address()
    ray_env_defaults()
    if address and address != LOCAL_RAY:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            address=LOCAL_RAY,
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=os.environ["RAY_TMPDIR"],
        )
    for name in ("ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _ray_start_s.append(time.monotonic() - started)
    return _ray_start_s[0]
