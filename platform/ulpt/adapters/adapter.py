"""`Adapter`: learned prompt parameters plus everything needed to check and rebuild them.

What its tensors are and how they become a prompt is its method's (`ulpt.adapters.methods`); how it
is written and read, as a folder or one blob, is `ulpt.adapters.codec`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from ulpt.adapters import codec, limits, projection
from ulpt.adapters.spec import AdapterSpec
from ulpt.config import atomic_write_bytes
from ulpt.errors import AdapterFormatError, FingerprintMismatchError


class Adapter(nn.Module):
    """One adapter: a few learned tensors whose `prompt_embeddings()` is the [n, d] prompt."""

    def __init__(
        self,
        spec: AdapterSpec,
        hidden_size: int,
        params: dict[str, torch.Tensor],
        base_model: str | None = None,
    ) -> None:
        super().__init__()
        spec.check_hidden_size(hidden_size)
        self.spec = spec
        self.hidden_size = hidden_size
        self.base_model = base_model
        self.params = nn.ParameterDict({k: nn.Parameter(v.to(torch.float32)) for k, v in params.items()})
        frozen = spec.adapter_method.frozen_tensors(spec, hidden_size)
        self._frozen_names = list(frozen)
        for name, tensor in frozen.items():  # buffers, so .to(device) moves them with the parameters
            self.register_buffer(name, tensor, persistent=False)
        # Fingerprint of the one frozen random tensor (ULPT's P, LoPT-2's X0): proves the seed regenerates it.
        self.projection_fingerprint = projection.fingerprint(*frozen.values()) if frozen else None

    @classmethod
    def create(
        cls,
        spec: AdapterSpec,
        hidden_size: int,
        *,
        token_embeddings: torch.Tensor | None = None,
        base_model: str | None = None,
    ) -> Adapter:
        """A fresh adapter, initialized deterministically from `spec.seed`."""
        spec.check_hidden_size(hidden_size)
        params = spec.adapter_method.init_params(spec, hidden_size, token_embeddings)
        return cls(spec, hidden_size, params, base_model)

    @property
    def frozen(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._frozen_names}

    @property
    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def prompt_embeddings(self) -> torch.Tensor:
        """The materialized float32 [n_tokens, hidden_size] prompt (differentiable while training)."""
        return self.spec.adapter_method.materialize(dict(self.params), self.frozen)

    # ---- file format (ulpt.adapters.codec) ---------------------------------------------------

    def config(self) -> dict[str, Any]:
        return codec.make_config(
            self.spec,
            self.hidden_size,
            self.base_model,
            self.num_trainable_params,
            self.projection_fingerprint,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.params.items()}

    def to_bytes(self) -> bytes:
        """One self-describing blob: safetensors bytes whose metadata holds the config."""
        return codec.to_blob(self.tensors(), self.config())

    @classmethod
    def from_bytes(cls, data: bytes) -> Adapter:
        """Rebuild and check an adapter from `to_bytes()` output."""
        return cls.from_parts(*codec.from_blob(data))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write adapter.safetensors and adapter_config.json; each file appears whole or not at all."""
        return codec.write_folder(folder, self.tensors(), self.config())

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Adapter:
        """Load and check a saved adapter; refuses files that do not match their config or seed."""
        return cls.from_parts(*codec.read_folder(folder))

    @classmethod
    def from_parts(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Adapter:
        """Check tensors against the config and regenerate the projection; raise on any mismatch.

        The config is checked first, against the memory bound of `ulpt.adapters.limits`, so a small
        file claiming a huge rank or hidden size is refused before anything big is allocated.
        """
        codec.check_format_version(config)
        spec, hidden, proj = limits.spec_from_config(config)  # before P is generated: bounds its size
        expected = spec.adapter_method.shapes(spec, hidden)
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            raise AdapterFormatError(
                f"adapter tensors {found} do not match its config "
                f"(method={spec.method}, n_tokens={spec.n_tokens}, rank={spec.rank}, hidden_size={hidden}): "
                f"expected {expected}"
            )
        for name, tensor in tensors.items():
            if tensor.dtype != torch.float32 or not torch.isfinite(tensor).all():
                raise AdapterFormatError(f"adapter tensor {name} must be finite float32")
        adapter = cls(spec, hidden, tensors, config.get("base_model"))
        if proj is not None:
            if proj.get("generator_version") != projection.GENERATOR_VERSION:
                raise FingerprintMismatchError(
                    f"adapter was made with projection generator version {proj.get('generator_version')}, "
                    f"this ulpt has {projection.GENERATOR_VERSION}"
                )
            if proj.get("fingerprint") != adapter.projection_fingerprint:
                raise FingerprintMismatchError(
                    "projection fingerprint mismatch: the seed, rank, hidden size or distribution in the "
                    "config do not regenerate the projection this adapter was trained with"
                )
        return adapter

    # ---- interop -----------------------------------------------------------------------------

    def export_peft(self, folder: str | os.PathLike[str], base_config: Any | None = None) -> Path:
        """Write a PEFT PROMPT_TUNING adapter (the materialized prompt) that `PeftModel` loads as is.

        `base_config` (the base model's transformers config) fills in the layer and head counts;
        without it PEFT fills them itself when it loads the adapter onto a model.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        encoder_decoder = bool(getattr(base_config, "is_encoder_decoder", False))
        config = {
            "peft_type": "PROMPT_TUNING",
            "task_type": "SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM",
            "num_virtual_tokens": self.spec.n_tokens,
            "token_dim": self.hidden_size,
            "num_transformer_submodules": 1,
            "num_attention_heads": getattr(base_config, "num_attention_heads", None),
            "num_layers": getattr(base_config, "num_hidden_layers", None),
            "prompt_tuning_init": "RANDOM",
            "base_model_name_or_path": self.base_model,
            "inference_mode": True,
        }
        with torch.no_grad():
            prompt = self.prompt_embeddings().detach().contiguous()
        atomic_write_bytes(
            folder / "adapter_model.safetensors", save_safetensors_bytes({"prompt_embeddings": prompt})
        )
        atomic_write_bytes(folder / "adapter_config.json", (json.dumps(config, indent=2) + "\n").encode())
        return folder

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"Adapter(method={s.method!r}, n_tokens={s.n_tokens}, rank={s.rank}, seed={s.seed}, "
            f"hidden_size={self.hidden_size}, params={self.num_trainable_params})"
        )
