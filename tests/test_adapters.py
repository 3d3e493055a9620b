"""The adapter contract: parameter counts, determinism from the seed, the file format and its checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import ulpt
from ulpt.adapters.projection import fingerprint, make_projection
from ulpt.adapters.spec import METHODS
from ulpt.errors import AdapterFormatError, FingerprintMismatchError, SpecError


@pytest.mark.parametrize(
    ("d", "n", "r", "expected"),
    [
        # The ULPT paper's counts (T5-base d=768, 100 tokens; Llama-3.2-1B d=2048, 10 tokens).
        (768, 100, 2, 1_736),
        (768, 100, 64, 7_936),
        (768, 100, 256, 27_136),
        (2048, 10, 2, 4_116),
    ],
)
def test_ulpt_trainable_params_match_the_paper(d: int, n: int, r: int, expected: int) -> None:
    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(method="ulpt", n_tokens=n, rank=r, seed=1), hidden_size=d)
    assert adapter.num_trainable_params == expected == n * r + 2 * d


def test_baseline_and_ablation_param_counts() -> None:
    n, r, d = 10, 4, 64
    counts = {
        (m, shift, scale): ulpt.Adapter.create(
            ulpt.AdapterSpec(method=m, n_tokens=n, rank=r, use_shift=shift, use_scale=scale), d
        ).num_trainable_params
        for m, shift, scale in [
            ("pt", True, True),
            ("dpt", True, True),
            ("lopt1", True, True),
            ("lopt2", True, True),
            ("ulpt", False, True),
            ("ulpt", False, False),
        ]
    }
    assert counts == {
        ("pt", True, True): n * d,
        ("dpt", True, True): n * r + r * d,
        ("lopt1", True, True): r * (n + d),
        ("lopt2", True, True): 2 * r * d,
        ("ulpt", False, True): n * r + d,
        ("ulpt", False, False): n * r,
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "lora", "method must be one of"),
        ("n_tokens", 0, "n_tokens must be greater than or equal to 1, got 0"),
        ("rank", "2", "rank must be an integer"),
        ("seed", -1, "seed must be greater than or equal to 0, got -1"),
        ("projection", "uniform", "projection must be one of"),
        ("use_shift", 1, "use_shift must be true or false"),
    ],
)
def test_spec_validation_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ulpt.AdapterSpec(**{field: value})  # type: ignore[arg-type]


def test_rank_must_stay_below_hidden_size() -> None:
    with pytest.raises(SpecError, match="rank must be below the model's hidden size 64"):
        ulpt.Adapter.create(ulpt.AdapterSpec(rank=64), hidden_size=64)


def test_projection_is_deterministic_per_seed_and_xavier_scaled() -> None:
    a, b, c = make_projection(7, 2, 576), make_projection(7, 2, 576), make_projection(8, 2, 576)
    assert torch.equal(a, b) and not torch.equal(a, c)
    bound = math.sqrt(6 / (2 + 576))
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_fresh_prompt_rows_are_on_token_embedding_scale(tiny_models: dict[str, ulpt.BaseModel]) -> None:
    """With Z ~ N(0,1), Xavier P keeps rows near unit scale; the paper's N(0,1) P gives ~sqrt(r*d)."""
    model = tiny_models["llama"]
    d = model.hidden_size
    embed_norm = model.token_embeddings.norm(dim=-1).mean().item()
    xavier = ulpt.Adapter.create(ulpt.AdapterSpec(rank=2, n_tokens=50, seed=3), d).prompt_embeddings()
    normal = ulpt.Adapter.create(ulpt.AdapterSpec(rank=2, n_tokens=50, seed=3, projection="normal"), d)
    xavier_norm = xavier.norm(dim=-1).mean().item()
    normal_norm = normal.prompt_embeddings().norm(dim=-1).mean().item()
    assert embed_norm / 4 < xavier_norm < embed_norm * 4, (xavier_norm, embed_norm)
    assert normal_norm > 3 * xavier_norm


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method: str, tmp_path) -> None:
    adapter = ulpt.Adapter.create(
        ulpt.AdapterSpec(method=method, n_tokens=5, rank=3, seed=11), 32, base_model="m"
    )
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p))
    adapter.save(tmp_path)
    loaded = ulpt.Adapter.load(tmp_path)
    assert loaded.spec == adapter.spec and loaded.base_model == "m"
    assert torch.equal(loaded.prompt_embeddings(), adapter.prompt_embeddings())
    blob = ulpt.Adapter.from_bytes(adapter.to_bytes())
    assert torch.equal(blob.prompt_embeddings(), adapter.prompt_embeddings())
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["method"] == method and config["hidden_size"] == 32 and config["format_version"] == 1


def test_file_size_is_parameters_times_four_plus_small_header(tmp_path) -> None:
    ulpt_adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=100, rank=2), 2048)
    pt_adapter = ulpt.Adapter.create(ulpt.AdapterSpec(method="pt", n_tokens=100), 2048)
    for adapter in (ulpt_adapter, pt_adapter):
        size = (adapter.save(tmp_path / adapter.spec.method) / "adapter.safetensors").stat().st_size
        assert adapter.num_trainable_params * 4 <= size < adapter.num_trainable_params * 4 + 512


def test_projection_config_is_recorded(tmp_path) -> None:
    adapter = ulpt.Adapter.create(ulpt.AdapterSpec(seed=5), 32)
    config = json.loads((adapter.save(tmp_path) / "adapter_config.json").read_text())
    assert config["seed"] == 5
    assert config["projection"]["distribution"] == "xavier_uniform"
    assert config["projection"]["fingerprint"] == fingerprint(make_projection(5, 2, 32))
    assert config["projection"]["generator"] and config["projection"]["generator_version"] == 1


def _edit_config(folder, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"seed": 6}, FingerprintMismatchError, "projection fingerprint mismatch"),
        ({"rank": 3}, AdapterFormatError, "do not match its config"),
        ({"hidden_size": 48}, AdapterFormatError, "do not match its config"),
        ({"format_version": 99}, AdapterFormatError, "unsupported adapter format_version 99"),
        ({"method": "magic"}, AdapterFormatError, "method must be one of"),
    ],
)
def test_load_refuses_a_tampered_config(tmp_path, change, error, message) -> None:
    folder = ulpt.Adapter.create(ulpt.AdapterSpec(seed=5), 32).save(tmp_path)
    _edit_config(folder, **change)
    with pytest.raises(error, match=message):
        ulpt.Adapter.load(folder)


def test_load_refuses_a_changed_fingerprint_and_bad_weights(tmp_path) -> None:
    folder = ulpt.Adapter.create(ulpt.AdapterSpec(seed=5), 32).save(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["projection"]["fingerprint"] = "sha256:" + "0" * 64
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FingerprintMismatchError):
        ulpt.Adapter.load(folder)

    folder = ulpt.Adapter.create(ulpt.AdapterSpec(seed=5), 32).save(tmp_path / "nan")
    tensors = load_file(folder / "adapter.safetensors")
    tensors["ulpt_z"][0, 0] = float("nan")
    save_file(tensors, folder / "adapter.safetensors")
    with pytest.raises(AdapterFormatError, match="finite float32"):
        ulpt.Adapter.load(folder)

    (folder / "adapter.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(AdapterFormatError, match="not a valid safetensors"):
        ulpt.Adapter.load(folder)
    with pytest.raises(AdapterFormatError, match="is missing"):
        ulpt.Adapter.load(tmp_path / "nowhere")
    with pytest.raises(AdapterFormatError):
        ulpt.Adapter.from_bytes(b"\x00" * 4)


@pytest.mark.parametrize("method", METHODS)
def test_peft_export_loads_in_peft_with_the_same_logits(
    method: str, tiny_models, tiny_model_dirs, tmp_path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = tiny_models["llama"]
    adapter = ulpt.Adapter.create(
        ulpt.AdapterSpec(method=method, n_tokens=4, rank=2, seed=3), model.hidden_size
    )
    adapter.export_peft(tmp_path / "peft", base_config=model.config)
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]), tmp_path / "peft"
    )
    text = "the movie was good. A:"
    ids = torch.tensor([model.encode(text)])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits[0, -1]
    actual = model.score([(adapter, text)])[0]
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_lopt2_regenerates_its_frozen_input_from_the_seed(tmp_path) -> None:
    """LoPT-2 stores U and V only; X0 comes back from the seed, and a changed seed is refused."""
    spec = ulpt.AdapterSpec(method="lopt2", n_tokens=6, rank=3, seed=21)
    adapter = ulpt.Adapter.create(spec, 32)
    with torch.no_grad():
        adapter.params["lopt_u"].add_(0.3)
    assert set(adapter.tensors()) == {"lopt_u", "lopt_v"}
    x0 = adapter.frozen["x0"]
    expected = torch.tanh(x0 @ adapter.params["lopt_u"]) @ adapter.params["lopt_v"]
    torch.testing.assert_close(adapter.prompt_embeddings(), expected)

    loaded = ulpt.Adapter.from_bytes(adapter.to_bytes())
    torch.testing.assert_close(loaded.prompt_embeddings(), adapter.prompt_embeddings())

    adapter.save(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["seed"] = 22
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FingerprintMismatchError):
        ulpt.Adapter.load(tmp_path)
