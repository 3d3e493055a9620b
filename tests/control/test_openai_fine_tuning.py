"""OpenAI's fine-tuning API with the official `openai` client, end to end on a real local Ray Serve:
the control plane as its own Serve application (/control) beside the inference app (/llama) on one
port; upload a JSONL, create a job with ulpt options, follow it, and ask the fine-tuned model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.serve_fixtures import ServeStack

ROWS = [{"prompt": f"{a} plus {a} is", "completion": f" {2 * a}"} for a in range(6)]
CHAT = [{"messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"}]}] * 4


@pytest.fixture(scope="module")
def control(serve_stack: ServeStack) -> Iterator[str]:
    """The control application over the stack's catalog, allowed to train the tiny llama, and an
    inference app (/ft) serving that model under the name jobs record (its folder)."""
    from ray import serve

    from ulpt_control import ControlConfig
    from ulpt_control.deployment import build_application
    from ulpt_serving.app import build_application as build_inference
    from ulpt_serving.config import ServeConfig

    model = str(serve_stack.model_dirs["llama"])
    config = ControlConfig(home=str(serve_stack.home), base_models=(model,), events_poll_s=0.2)
    inference = ServeConfig(
        home=str(serve_stack.home), model=model, num_cpus=0, torch_threads=1, app_name="ft", engine="native"
    )  # ulpt's engine: vLLM's CPU attention has no kernel for the tiny model's 16-wide heads
    serve.run_many(
        [
            serve.RunTarget(build_application(config), name="control", route_prefix="/control"),
            serve.RunTarget(build_inference(inference), name="ft", route_prefix="/ft"),
        ]
    )
    try:
        yield f"{serve_stack.url}/control/v1"
    finally:
        serve.delete("control")
        serve.delete("ft")


def upload(client: openai.OpenAI, rows: list[dict[str, Any]]) -> Any:
    return client.files.create(
        file=("rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()), purpose="fine-tune"
    )


def test_fine_tune_and_complete_with_the_official_client(control: str, serve_stack: ServeStack) -> None:
    key = serve_stack.keys["acme"]
    tuning = openai.OpenAI(base_url=control, api_key=key, max_retries=0)
    model_dir = str(serve_stack.model_dirs["llama"])

    training_file = upload(tuning, ROWS)
    assert training_file.purpose == "fine-tune" and training_file.bytes > 0
    assert tuning.files.retrieve(training_file.id).filename == "rows.jsonl"
    job = tuning.fine_tuning.jobs.create(
        model=model_dir,
        training_file=training_file.id,
        suffix="sums",
        hyperparameters={"batch_size": 2},
        extra_body={"ulpt": {"rank": 2, "n_tokens": 3, "steps": 4}},
    )
    assert job.status in ("queued", "running") and job.training_file == training_file.id
    deadline = time.monotonic() + 300
    while job.status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        job = tuning.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is not None and job.fine_tuned_model.startswith("ft-sums-")
    assert job.id in [j.id for j in tuning.fine_tuning.jobs.list()]
    messages = [e.message for e in tuning.fine_tuning.jobs.list_events(job.id)]
    assert messages[0] == "job succeeded" and f"fine-tuned model {job.fine_tuned_model} ready" in messages

    inference = openai.OpenAI(base_url=f"{serve_stack.base('ft')}/v1", api_key=key, max_retries=0)
    answer = inference.completions.create(model=job.fine_tuned_model, prompt="3 plus 3 is", max_tokens=3)
    assert answer.model == job.fine_tuned_model and answer.usage.completion_tokens >= 1

    other = openai.OpenAI(base_url=control, api_key=serve_stack.keys["globex"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(
            base_url=f"{serve_stack.base('ft')}/v1", api_key=serve_stack.keys["globex"]
        ).completions.create(model=job.fine_tuned_model, prompt="x", max_tokens=1)


def test_chat_rows_are_accepted_and_bad_rows_refused(control: str, serve_stack: ServeStack) -> None:
    tuning = openai.OpenAI(base_url=control, api_key=serve_stack.keys["acme"], max_retries=0)
    assert upload(tuning, CHAT).purpose == "fine-tune"
    with pytest.raises(openai.BadRequestError, match="completion"):
        upload(tuning, [{"text": "no prompt"}])
    with pytest.raises(openai.BadRequestError, match="model: not offered"):
        tuning.fine_tuning.jobs.create(model="/etc", training_file=upload(tuning, ROWS).id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=control, api_key="nope", max_retries=0).fine_tuning.jobs.list()
