"""Fuzzing the HTTP API: schemathesis requests generated from the running server's own OpenAPI schema,
then hostile bodies by hand; the replica must answer every one with a documented status and body, never
a 5xx for a client's mistake, and still be the same live process afterwards."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from tests.reliability_fixtures import ReliabilityRun
from tests.serve_fixtures import SideApp, make_adapter, replica_process
from ulpt_serving.admission import MAX_BODY_BYTES

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("one_torch_thread")]

TENANT = "fuzz"
NAMES = [f"fuzz-{i}" for i in range(4)]
WEIGHTS = {
    ("POST", "/v1/completions"): 0.4,
    ("POST", "/v1/chat/completions"): 0.4,
    ("GET", "/v1/models"): 0.2,
    ("GET", "/healthz"): 0.0,  # no input: one request is all there is to generate
}
"""Share of the generated requests per operation, each split evenly between valid and invalid data."""
LIMIT_PARAMS = {"prompt", "messages", "max_tokens", "max_completion_tokens"}
"""Fields whose limits depend on the server's config or the model's tokenizer, so no static schema
can state them (see `_explained`)."""


@dataclass
class FuzzApp:
    url: str
    key: str
    app: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def complete(self, model: str = NAMES[0]) -> httpx.Response:
        body = {"model": model, "prompt": "hello there", "max_tokens": 4, "temperature": 0}
        return httpx.post(f"{self.url}/v1/completions", json=body, headers=self.auth, timeout=60)


@pytest.fixture(scope="module")
def fuzz_app(side_app: SideApp) -> FuzzApp:
    """The side app (its own catalog and a max_tokens limit of 16, so requests that reach the model
    stay cheap): the fuzzing neither sees nor disturbs other tests' adapters."""
    with side_app.client(TENANT) as client:
        for i, name in enumerate(NAMES):
            client.adapters.register(make_adapter(64, i, side_app.base_model), name=name)
    return FuzzApp(side_app.url, side_app.key(TENANT), side_app.name)


@dataclass
class Tally:
    sent: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    explained: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {detail[:600]}")


def _explained(failure: Any, case: Any, response: Any) -> str | None:
    """Why a check's complaint is not a fault of the server, if it is not; None for a real failure.

    - valid by schema yet refused with 400 for a limit no static schema can state (LIMIT_PARAMS), or a
      made-up `after` cursor;
    - invalid as generated yet valid as sent: a query value the generator negated by turning it into
      an object or array serializes to a valid value or to nothing (`?=`); unknown query parameters
      are ignored, as OpenAPI cannot forbid them.
    """
    name = type(failure).__name__
    if name == "RejectedPositiveData" and response.status_code == 400:
        if case.path == "/v1/models" and (case.query or {}).get("after") is not None:
            return "valid_by_schema_made_up_cursor"
        try:
            param = json.loads(response.content)["error"]["param"]
        except (ValueError, KeyError, TypeError):
            return None
        return f"valid_by_schema_over_limit_{param}" if param in LIMIT_PARAMS else None
    if name == "AcceptedNegativeData" and case.path == "/v1/models" and response.status_code == 200:
        sent = parse_qs(urlsplit(str(response.request.url)).query, keep_blank_values=True)
        limits, afters = sent.get("limit", []), sent.get("after", [])
        valid_limit = all(v.isdigit() and 1 <= int(v) <= 1000 for v in limits) and len(limits) <= 1
        valid_after = all(re.fullmatch(r"[A-Za-z0-9_-]+", v) for v in afters) and len(afters) <= 1
        return "invalid_as_generated_valid_as_sent" if valid_limit and valid_after else None
    return None


def _fuzz(
    app: FuzzApp, operation: Any, mode: GenerationMode, count: int, deadline: float, tally: Tally
) -> None:
    strategy = operation.as_strategy(generation_mode=mode)
    # Valid bodies mostly name an adapter that exists, or they would all stop at the 404.
    model = st.sampled_from([None, *NAMES]) if mode is GenerationMode.POSITIVE else st.none()

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, model=model)
    def run(case: Any, model: str | None) -> None:
        if time.monotonic() > deadline:
            return
        if model is not None and isinstance(case.body, dict):
            case.body["model"] = model
        response = case.call(base_url=app.url, headers=app.auth, timeout=60)
        tally.sent += 1
        tally.by_status[response.status_code] += 1
        if response.status_code >= 500:
            tally.fail(
                "server_error", f"{response.status_code} {response.text[:200]}: {case.as_curl_command()}"
            )
        try:
            case.validate_response(response, headers=app.auth)
        except FailureGroup as group:
            for failure in group.exceptions:
                reason = _explained(failure, case, response)
                if reason is not None:
                    tally.explained[reason] += 1
                else:
                    answer = f"{response.status_code} {response.text[:300]}"
                    tally.fail(
                        type(failure).__name__, f"{failure.title} <- {answer} <- {case.as_curl_command()}"
                    )

    try:
        run()
    except Unsatisfiable:  # /healthz takes no input, so there is no invalid data to generate for it
        assert mode is GenerationMode.NEGATIVE


def _assert_replica_alive(app: FuzzApp, pid: int, started: int) -> None:
    health = httpx.get(f"{app.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    answer = app.complete()
    assert answer.status_code == 200, answer.text
    process = replica_process(app.app)
    assert (process.pid, start_ticks(process.pid)) == (pid, started), "the replica was restarted"


def start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot (/proc/PID/stat): unlike psutil's
    create_time, which adds the boot time read from the wall clock, a clock step does not move it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of the line; the split dropped the first two


def test_generated_requests_get_documented_answers_and_never_take_the_replica_down(
    fuzz_app: FuzzApp, reliability: ReliabilityRun
) -> None:
    total = reliability.size(ci=300, full=10_000)
    budget_s = 900.0 if reliability.full else 60.0
    replica = replica_process(fuzz_app.app)
    pid, started = replica.pid, start_ticks(replica.pid)
    schema = schemathesis.openapi.from_url(f"{fuzz_app.url}/openapi.json")
    tally = Tally()
    began = time.monotonic()
    deadline = began + budget_s
    for (method, path), weight in WEIGHTS.items():
        operation = schema[path][method]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(fuzz_app, operation, mode, max(1, round(total * weight / 2)), deadline, tally)
    duration = time.monotonic() - began
    _assert_replica_alive(fuzz_app, pid, started)
    server_errors = sum(n for status, n in tally.by_status.items() if status >= 500)
    reliability.record(
        "http_fuzz",
        {
            "requests_planned": total,
            "requests_sent": tally.sent,
            "by_status": {str(k): v for k, v in sorted(tally.by_status.items())},
            "server_errors_5xx": server_errors,
            "check_failures": dict(tally.failures),
            "schema_violations": sum(
                n
                for kind, n in tally.failures.items()
                if kind not in ("RejectedPositiveData", "server_error")
            ),
            "stopped_by_time_budget": duration >= budget_s,
            "check_complaints_explained": dict(tally.explained),
            "replica_restarts": 0,
            "duration_s": round(duration, 1),
            "requests_per_s": round(tally.sent / duration, 1),
        },
    )
    assert tally.sent >= 0.95 * total or duration >= budget_s, tally
    assert server_errors == 0, tally.examples
    assert not tally.failures, tally.examples


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """A body sent chunked (no Content-Length): the server only learns its size by reading it."""
    yield b'{"model": "fuzz-0", "prompt": "'
    for _ in range(total // size):
        yield b"a" * size
    yield b'"}'


def _nested(depth: int) -> bytes:
    return b'{"model": "fuzz-0", "prompt": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE: dict[str, tuple[dict[str, Any], set[int]]] = {
    # name: (httpx.post keyword arguments, statuses allowed)
    "body_8MiB_with_length": (
        {"content": b'{"model": "fuzz-0", "prompt": "' + b"a" * (8 << 20) + b'"}'},
        {413},
    ),
    "body_8MiB_chunked": ({"content": _chunks(8 << 20)}, {413}),
    "body_just_under_limit": (
        {"content": b'{"model": "fuzz-0", "prompt": "' + b"a" * (3 << 20) + b'"}'},
        {400},
    ),
    # ~6M tokens in 3 MiB: tokenized whole it held ~1 GB in the replica; refused after a few chunks.
    "prompt_of_6M_tokens": (
        {"content": b'{"model": "fuzz-0", "prompt": "' + b"hello world " * (1 << 18) + b'"}'},
        {400},
    ),
    "max_tokens_1e9": ({"json": {"model": "fuzz-0", "prompt": "x", "max_tokens": 10**9}}, {400}),
    "max_tokens_2e63": ({"json": {"model": "fuzz-0", "prompt": "x", "max_tokens": 2**63}}, {400}),
    "max_tokens_1e400": (
        {"content": b'{"model": "fuzz-0", "prompt": "x", "max_tokens": 1' + b"0" * 400 + b"}"},
        {400},
    ),
    "max_tokens_float": ({"json": {"model": "fuzz-0", "prompt": "x", "max_tokens": 1e308}}, {400}),
    "max_tokens_negative": ({"json": {"model": "fuzz-0", "prompt": "x", "max_tokens": -1}}, {400}),
    "temperature_nan": ({"content": b'{"model": "fuzz-0", "prompt": "x", "temperature": NaN}'}, {400}),
    "invalid_utf8_in_string": ({"content": b'{"model": "fuzz-0", "prompt": "\xff\xfe\xc3\x28"}'}, {400}),
    "invalid_utf8_in_model": ({"content": b'{"model": "fuzz-\xc0\xaf", "prompt": "x"}'}, {400}),
    "lone_surrogate_escape": ({"content": b'{"model": "fuzz-0", "prompt": "\\ud800"}'}, {200, 400}),
    "nested_arrays_100k": ({"content": _nested(100_000)}, {400}),
    "nested_objects_100k": ({"content": b'{"a":' * 100_000 + b"1" + b"}" * 100_000}, {400}),
    "nested_prompt_1k": ({"content": _nested(1000)}, {400}),
    "prompts_10k": ({"json": {"model": "fuzz-0", "prompt": ["x"] * 10_000}}, {400}),
    "model_name_100k_chars": ({"json": {"model": "m" * 100_000, "prompt": "x"}}, {400}),
    "nul_bytes_in_prompt": ({"json": {"model": "fuzz-0", "prompt": "a\x00b\x00", "max_tokens": 2}}, {200}),
    "content_type_text_plain": (
        {
            "content": b'{"model": "fuzz-0", "prompt": "x", "max_tokens": 2}',
            "headers": {"Content-Type": "text/plain"},
        },
        {200},  # the body is judged as JSON whatever the label, like OpenAI's API and curl -d users expect
    ),
    "content_type_form": (
        {
            "content": b"model=fuzz-0&prompt=x",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        },
        {400},
    ),
    "content_type_multipart": (
        {"files": {"prompt": ("p.txt", b"hello")}, "data": {"model": "fuzz-0"}},
        {400},
    ),
    "content_type_xml": (
        {"content": b"<model>fuzz-0</model>", "headers": {"Content-Type": "application/xml"}},
        {400},
    ),
    "json_scalar": ({"content": b'"just a string"'}, {400}),
    "json_null": ({"content": b"null"}, {400}),
    "duplicate_keys": (
        {"content": b'{"model": "nope", "model": "fuzz-0", "prompt": "x", "max_tokens": 2}'},
        {200},
    ),
}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_hostile_bodies_are_refused_with_a_client_error_and_the_replica_lives_on(
    fuzz_app: FuzzApp, reliability: ReliabilityRun, path: str
) -> None:
    replica = replica_process(fuzz_app.app)
    pid, started = replica.pid, start_ticks(replica.pid)
    rss_before = replica.memory_info().rss
    outcomes: dict[str, int] = {}
    rss: dict[str, float] = {}
    for name, (kwargs, allowed) in HOSTILE.items():
        if path.endswith("chat/completions") and allowed == {200}:
            allowed = {400}  # the same bodies lack a chat's `messages`
        kwargs = dict(kwargs)
        if isinstance(kwargs.get("content"), Iterator):
            kwargs["content"] = _chunks(8 << 20)  # a generator is used up by the first run
        headers = {**fuzz_app.auth, **kwargs.pop("headers", {})}
        answer = httpx.post(f"{fuzz_app.url}{path}", headers=headers, timeout=120, **kwargs)
        outcomes[name] = answer.status_code
        rss[name] = round(replica.memory_info().rss / 2**20, 1)
        assert answer.status_code in allowed, (name, answer.status_code, answer.text[:300])
        if answer.status_code >= 400:
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"], name
    rss_after = replica.memory_info().rss
    wrong_method = httpx.put(f"{fuzz_app.url}{path}", headers=fuzz_app.auth, json={}, timeout=30)
    outcomes["method_put"] = wrong_method.status_code
    assert wrong_method.status_code == 405
    _assert_replica_alive(fuzz_app, pid, started)
    section = "http_hostile_" + ("chat" if "chat" in path else "completions")
    reliability.record(
        section,
        {
            "cases": len(outcomes),
            "status_by_case": outcomes,
            "server_errors_5xx": sum(1 for s in outcomes.values() if s >= 500),
            "replica_rss_mb_before": round(rss_before / 2**20, 1),
            "replica_rss_mb_after": round(rss_after / 2**20, 1),
            "replica_rss_mb_after_each_case": rss,
            "replica_restarts": 0,
            "max_body_bytes": MAX_BODY_BYTES,
        },
    )
    assert rss_after - rss_before < 256 << 20, rss


@pytest.mark.parametrize("temperature, top_p", [(5e-324, 1.0), (1e-40, 1.0), (1.0, 5e-324), (1.0, 1e-46)])
def test_temperature_or_top_p_next_to_zero_decode_greedily_instead_of_failing(
    fuzz_app: FuzzApp, temperature: float, top_p: float
) -> None:
    """Found by the fuzzer: such values made float32 sampling divide by ~0 and answered 500."""
    body = {"model": NAMES[1], "prompt": "one two three", "max_tokens": 6}
    greedy = httpx.post(
        f"{fuzz_app.url}/v1/completions", json={**body, "temperature": 0}, headers=fuzz_app.auth, timeout=60
    )
    near_zero = httpx.post(
        f"{fuzz_app.url}/v1/completions",
        json={**body, "temperature": temperature, "top_p": top_p, "seed": 1},
        headers=fuzz_app.auth,
        timeout=60,
    )
    assert near_zero.status_code == 200, near_zero.text
    assert near_zero.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
