"""`ServeConfig`: validation that names the field, and `serve run ... key=value` strings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ulpt.errors import SpecError
from ulpt_serving import ServeConfig
from ulpt_serving.app import build_app


def test_serve_run_arguments_become_typed_fields() -> None:
    config = ServeConfig.from_dict(
        {
            "model": "m",
            "port": "8001",
            "auth": "false",
            "batch_wait_timeout_s": "0.05",
            "hot_cache_count": "none",
        }
    )
    assert config.port == 8001 and config.auth is False and config.batch_wait_timeout_s == 0.05
    assert config.hot_cache_count is None and config.base_model_name == "m"
    assert ServeConfig.from_dict(config.to_dict()) == config
    app = build_app({"model": "m", "max_batch_size": "8", "max_ongoing_requests": "16"})
    assert type(app).__name__ == "Application"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"auth": False, "host": "0.0.0.0"}, "loopback"),
        ({"port": 0}, "port"),
        ({"max_batch_size": 64, "max_ongoing_requests": 8}, "max_ongoing_requests"),
        ({"retry_after_s": -1}, "retry_after_s"),
        ({"route_prefix": "v1"}, "route_prefix"),
        ({"hot_cache_count": 0}, "hot_cache_count"),
        ({"max_batch_size": "many"}, "max_batch_size"),
        ({"colour": "blue"}, "^colour is not a known field; known: "),
        ({"batch_wait_timeout_s": "nan"}, "batch_wait_timeout_s must be a finite number, got nan"),
        ({"batch_wait_timeout_s": float("inf")}, "batch_wait_timeout_s must be a finite number"),
        ({"batch_wait_timeout_s": True}, "batch_wait_timeout_s must be a finite number, got True"),
        ({"retry_after_s": float("nan")}, "retry_after_s must be a finite number"),
        ({"auth_cache_ttl_s": "inf"}, "auth_cache_ttl_s must be a finite number"),
        ({"resolve_cache_ttl_s": "-inf"}, "resolve_cache_ttl_s must be a finite number"),
        ({"num_cpus": "nan"}, "num_cpus must be a finite number"),
        ({"num_gpus": False}, "num_gpus must be a finite number"),
        ({"dtype": "fp8"}, "dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
        ({"port": True}, "port must be an integer"),
        ({"max_batch_size": 8.0}, "max_batch_size must be an integer"),
    ],
)
def test_invalid_settings_are_refused_by_name(fields: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ServeConfig.from_dict({"model": "m", **fields})


def test_auth_less_mode_is_allowed_on_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert ServeConfig(auth=False, host=host).auth is False


def test_a_replica_loads_the_base_model_in_the_configured_dtype(tiny_model_dirs: dict[str, Path]) -> None:
    from ulpt_serving.app import default_model

    folder = str(tiny_model_dirs["llama"])
    assert default_model(ServeConfig(model=folder)).token_embeddings.dtype == torch.float32  # auto on a CPU
    half = default_model(ServeConfig(model=folder, dtype="bfloat16"))
    assert half.token_embeddings.dtype == torch.bfloat16 and half.device.type == "cpu"


@pytest.mark.parametrize(
    ("asked", "installed", "encoder_decoder", "chosen"),
    [
        ("auto", True, False, "vllm"),
        ("auto", True, True, "native"),
        ("auto", False, False, "native"),
        ("native", True, False, "native"),
        ("vllm", True, False, "vllm"),
        ("vllm", False, False, "needs the vllm extra"),
        ("vllm", True, True, "decoder-only"),
    ],
)
def test_the_engine_is_vllm_where_installed_for_decoder_only_models_unless_asked_otherwise(
    monkeypatch: pytest.MonkeyPatch, asked: str, installed: bool, encoder_decoder: bool, chosen: str
) -> None:
    from types import SimpleNamespace

    from ulpt_serving import vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: installed)
    config = ServeConfig(model="m", engine=asked)
    model: Any = SimpleNamespace(is_encoder_decoder=encoder_decoder)
    if chosen in ("vllm", "native"):
        assert vllm_engine.engine_kind(config, model) == chosen
    else:
        with pytest.raises(ValueError, match=chosen):
            vllm_engine.engine_kind(config, model)
    with pytest.raises(SpecError, match="engine"):
        ServeConfig(model="m", engine="tgi")
