"""The base model's weights shared through Ray's object store: the same model as a disk load, read-only
for every process that maps them, and one buffer for all processes of a node."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch

import ulpt
from tests.serve_fixtures import ServeStack, deploy_app, tiny_llama_config
from ulpt.models.shared import load_shared_base_model, pack_base_model
from ulpt.training import train_adapter

ROWS = [
    {"input": f"review {i}: {'good' if i % 2 else 'bad'} stay", "target": "yes" if i % 2 else "no"}
    for i in range(8)
]


def _logprobs(model: ulpt.BaseModel, adapter: ulpt.Adapter) -> torch.Tensor:
    inputs = [model.encode("the movie was"), model.encode("one plus two")]
    targets = [model.encode_target("the movie was", "good"), model.encode_target("one plus two", "three")]
    with torch.no_grad():
        return model.target_logprobs([adapter, None], inputs, targets)[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_shared_weights_make_the_same_model_as_a_disk_load(
    tiny_model_dirs: dict[str, Path], family: str, dtype: str
) -> None:
    disk = ulpt.load_base_model(tiny_model_dirs[family], dtype=dtype)
    packed = pack_base_model(tiny_model_dirs[family], dtype=dtype)
    shared = load_shared_base_model(packed)
    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=3, rank=2, seed=1), disk.hidden_size)
    assert torch.equal(_logprobs(shared, adapter), _logprobs(disk, adapter))
    assert shared.fingerprint == disk.fingerprint  # adapters name the same base revision
    assert shared.token_embeddings.dtype == getattr(torch, dtype)
    # Every parameter is a view of the one buffer, not a copy (tied weights included).
    low, high = packed.buffer.ctypes.data, packed.buffer.ctypes.data + packed.nbytes
    assert all(low <= p.data_ptr() < high for p in shared.hf.parameters())


def test_a_fit_trained_on_shared_weights_equals_one_trained_on_a_private_copy(
    tiny_model_dirs: dict[str, Path],
) -> None:
    spec = ulpt.AdapterSpec(n_tokens=4, rank=2, seed=7)
    private = ulpt.load_base_model(tiny_model_dirs["llama"])
    shared = load_shared_base_model(pack_base_model(tiny_model_dirs["llama"]))
    one, _ = train_adapter(private, spec, ROWS, steps=4, lr=0.1, batch_size=4)
    two, _ = train_adapter(shared, spec, ROWS, steps=4, lr=0.1, batch_size=4)
    torch.testing.assert_close(one.prompt_embeddings(), two.prompt_embeddings(), rtol=0, atol=0)


def test_an_in_place_write_to_a_shared_weight_crashes_the_writer(tiny_model_dirs: dict[str, Path]) -> None:
    """The pages are mapped read-only: a write is a crash here, never a silent change to every process."""
    script = textwrap.dedent(
        f"""
        import torch
        from ulpt.models.shared import load_shared_base_model, pack_base_model
        model = load_shared_base_model(pack_base_model({str(tiny_model_dirs["llama"])!r}))
        weight = model.token_embeddings
        print("read", float(weight.sum()), flush=True)
        with torch.no_grad():
            weight.add_(1.0)
        print("wrote", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "read" in done.stdout and "wrote" not in done.stdout, (done.stdout, done.stderr[-2000:])
    assert done.returncode == -signal.SIGSEGV, done.stderr[-2000:]


def test_two_ray_processes_on_a_node_map_one_buffer_and_a_writer_cannot_change_it(
    ray_session: None, tiny_model_dirs: dict[str, Path]
) -> None:
    import ray

    from ulpt.models.shared import put_base_model

    ref = put_base_model(tiny_model_dirs["llama"])
    assert ref is not None

    @ray.remote(num_cpus=0)
    class Replica:
        def __init__(self, refs: list) -> None:
            self.model = load_shared_base_model(refs[0])

        def backing(self) -> tuple[str, int]:
            """(file, offset in it) behind the embedding weights: the same pair means the same memory."""
            address = self.model.token_embeddings.data_ptr()
            for line in Path("/proc/self/maps").read_text().splitlines():
                span, _perms, offset, _dev, _inode, *path = line.split()
                low, high = (int(x, 16) for x in span.split("-"))
                if low <= address < high:
                    return (path[0] if path else "anonymous", address - low + int(offset, 16))
            raise AssertionError("address not mapped")

        def checksum(self) -> float:
            return float(self.model.token_embeddings.double().sum())

        def write(self) -> None:
            with torch.no_grad():
                self.model.token_embeddings.add_(1.0)

    first, second = Replica.remote([ref]), Replica.remote([ref])
    where = ray.get([first.backing.remote(), second.backing.remote()])
    assert where[0] == where[1] and where[0][0] != "anonymous", where
    before = ray.get(first.checksum.remote())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(second.write.remote())
    assert ray.get(first.checksum.remote()) == before
    ray.kill(first)


def test_serve_replicas_share_the_base_and_answer_as_a_private_copy_does(serve_stack: ServeStack) -> None:
    """Two replicas built by the default model path map the node's one copy; their greedy answers equal
    those of serve_stack's llama app, whose replica loaded a private copy from disk."""
    from ray import serve

    from ulpt_serving.app import Dependencies

    config = tiny_llama_config(serve_stack, auth=True, num_replicas=2)
    prefix = deploy_app("shared", config, Dependencies())
    try:
        handle = serve.get_app_handle("shared")
        assert {handle.stats.remote().result()["base_weights"] for _ in range(8)} == {"shared"}
        assert serve_stack.handle("llama").stats.remote().result()["base_weights"] == "private"
        for model in ("llama-03", "llama-best", "tiny-llama"):
            body = {"model": model, "prompt": "the food was", "max_tokens": 6, "temperature": 0}
            answers = [
                httpx.post(f"{base}/v1/completions", json=body, headers=serve_stack.headers(), timeout=60)
                for base in (f"{serve_stack.url}{prefix}", serve_stack.base("llama"))
            ]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            assert answers[0].json()["choices"][0]["text"] == answers[1].json()["choices"][0]["text"]
    finally:
        serve.delete("shared")
