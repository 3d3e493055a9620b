"""`client.generate` (over HTTP and in process) and the `ulpt serve` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

import ulpt
from tests.serve_fixtures import ServeStack, free_port, make_adapter
from ulpt.errors import NotFoundError
from ulpt.sdk import Client
from ulpt.serving_client import ServerError, generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "the movie was good. A:"
ULPT = [sys.executable, "-c", "import ulpt.cli; ulpt.cli.main()"]  # the `ulpt` entry point


def test_generate_over_http_and_in_process_give_the_same_text(
    serve_stack: ServeStack, tiny_models: dict[str, ulpt.BaseModel]
) -> None:
    with Client(home=serve_stack.home, tenant="acme") as client:
        url, key = serve_stack.base("llama"), serve_stack.keys["acme"]
        remote = generate(client, "llama-05", PROMPT, max_new_tokens=8, base_url=url, api_key=key)
        local = generate(client, "llama-05", PROMPT, max_new_tokens=8, base_model=tiny_models["llama"])
        assert remote == local
        via_v1 = generate(client, "llama-best", PROMPT, max_new_tokens=8, base_url=url + "/v1", api_key=key)
        assert via_v1 == generate(client, "llama-03", PROMPT, max_new_tokens=8, base_url=url, api_key=key)
        with pytest.raises(NotFoundError):
            generate(client, "globex/llama-secret", PROMPT, base_url=url, api_key=key)
        with pytest.raises(NotFoundError):
            generate(client, "globex/llama-secret", PROMPT, base_model=tiny_models["llama"])
        with pytest.raises(ServerError) as info:
            generate(
                client, "llama-05", PROMPT, base_url=url, api_key="ulpt_000000000000_wrong-wrong-wrong-wrong"
            )
        assert info.value.status == 401 and "wrong" not in str(info.value)


def _ulpt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ULPT, *args], capture_output=True, text=True, env=env, timeout=120)


def test_serve_refuses_auth_less_public_hosts_and_busy_ports(tiny_model_dirs: dict[str, Path]) -> None:
    refused = _ulpt("serve", "--no-auth", "--host", "0.0.0.0", "--model", str(tiny_model_dirs["llama"]))
    assert refused.returncode == 1 and "loopback" in refused.stderr and "Traceback" not in refused.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        taken = _ulpt("serve", "--port", port, "--model", str(tiny_model_dirs["llama"]))
    assert taken.returncode == 1 and "already in use" in taken.stderr and "Traceback" not in taken.stderr


def test_serve_refuses_a_batch_wait_or_cpus_that_are_not_finite_numbers() -> None:
    """One line naming the option, before anything starts: a NaN wait gave a healthy server that never
    answered."""
    for option, value in (
        ("--batch-wait-ms", "nan"),
        ("--batch-wait-ms", "inf"),
        ("--num-cpus", "nan"),
        ("--num-gpus", "inf"),
    ):
        refused = _ulpt("serve", option, value)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.strip() == f"error: {option} must be a finite number, got {value}"
    refused = _ulpt("serve", "--dtype", "fp8")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip() == "error: --dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"
    )
    for share in ("0.0", "1.5", "nan"):
        refused = _ulpt("serve", "--vllm-gpu-memory-share", share)
        assert refused.returncode == 1
        assert (
            refused.stderr.strip()
            == f"error: --vllm-gpu-memory-share must be a number in (0, 1], got {share}"
        )
    refused = _ulpt("serve", "--engine", "tgi")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: --engine must be one of auto, vllm, native, got 'tgi'"


def test_serve_checks_the_model_folder_and_the_catalog_before_starting_ray(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    not_a_model = _ulpt("serve", "--model", "/etc", "--home", str(tmp_path / "home"))
    assert not_a_model.returncode == 1 and "Traceback" not in not_a_model.stderr
    assert not_a_model.stderr.startswith("error: --model /etc: not a model folder (no config.json")
    assert len(not_a_model.stderr.strip().splitlines()) == 1
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"postgresql://ulpt@127.0.0.1:{closed.getsockname()[1]}/ulpt"  # nothing listens there
        no_catalog = _ulpt("serve", "--model", str(tiny_model_dirs["llama"]), "--catalog-url", dead)
    assert no_catalog.returncode == 1 and "Traceback" not in no_catalog.stderr
    assert "catalog" in no_catalog.stderr and len(no_catalog.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # starts a second Ray cluster (~20-60 s on 2 busy cores)
def test_ulpt_serve_runs_until_ctrl_c(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The real command: a fresh local Ray, the app on 127.0.0.1, a query, then a clean Ctrl-C."""
    home = tmp_path / "home"
    with Client(home=home) as client:
        client.adapters.register(make_adapter(64, 0, "tiny"), name="first")
    port = free_port()
    env = {
        **os.environ,
        "ULPT_HOME": str(home),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp"),  # unix sockets need a short path
    }
    args = ["serve", "--no-auth", "--port", str(port), "--model", str(tiny_model_dirs["llama"])]
    args += ["--served-model-name", "tiny", "--num-cpus", "0", "--threads", "1", "--engine", "native"]
    server = subprocess.Popen(
        [*ULPT, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.5)
        answer = httpx.post(f"{url}/v1/completions", json={"model": "first", "prompt": PROMPT}, timeout=60)
        assert answer.status_code == 200 and 0 < answer.json()["usage"]["completion_tokens"] <= 16
        assert {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]} == {
            "tiny",
            "first:1",
        }
        # The replica can answer a moment before the deployment call returns; a user presses Ctrl-C
        # once the command says it is serving, so the test does too.
        announced = _read_until(server, "(Ctrl-C to stop)", timeout=60)
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert f"{url}/v1" in announced + out


def _read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    """stdout of `process` up to and including the line that contains `marker` (read by a thread, so
    a server that never says it is serving fails the test instead of hanging it)."""
    assert process.stdout is not None
    stdout, seen = process.stdout, []

    def read() -> None:
        while line := stdout.readline():
            seen.append(line)
            if marker in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    text = "".join(seen)
    assert marker in text, text
    return text
