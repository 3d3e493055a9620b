"""Prefix key/value caches for constant prompts, in decoder-only models.

A ULPT prompt does not depend on the request, and in a causal model the keys and values at its n
positions depend only on the prompt (it comes first and attends to nothing after it). A server can
therefore compute them once per adapter and start every request after them, paying prefill only for
the request's own tokens. Reference semantics, row by row, to float noise:

    model(inputs_embeds=cat([prompt, embed(ids)]))                    # the prompt inline
    == model(embed(ids), cache=kv(prompt), positions=n, n+1, ...)   # the prompt as a prefix

In a batch, prefixes of different lengths are left-padded inside a prefix segment of the cache and
the rows' tokens follow in a second, separately left-padded segment; the attention mask hides both
kinds of padding and explicit position ids keep each row's positions as if it ran alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ulpt.models.batch import round_up
from ulpt.models.cachearg import cache_kwargs
from ulpt.models.transfer import Staging


@dataclass(frozen=True, eq=False)
class CachedPrompt:
    """A materialized prompt plus its keys and values at positions 0..n-1 of every layer, as ONE tensor:
    a batch assembles its prefixes with one copy per length group, not one per row and layer."""

    prompt: torch.Tensor  # [n, d], used where a prefix cannot be (scoring, empty texts)
    kv: torch.Tensor  # [layers, 2 (keys, values), kv_heads, n, head_dim]

    @property
    def n_tokens(self) -> int:
        return int(self.prompt.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prompt, self.kv))


def supports_prefix_cache(hf_model: Any) -> bool:
    """Decoder-only models whose every layer keeps its full past (no sliding windows, no linear attention)."""
    if getattr(hf_model.config, "is_encoder_decoder", False):
        return False
    try:
        layers = DynamicCache(config=hf_model.config).layers
    except (AttributeError, KeyError, ValueError, TypeError):
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@torch.no_grad()
def compute_prefixes(hf_model: Any, prompts: Sequence[torch.Tensor]) -> list[CachedPrompt]:
    """Run each prompt alone through the model once (prompts of equal length share a forward pass)."""
    out: list[CachedPrompt | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(int(prompt.shape[0]), []).append(i)
    for n, members in by_length.items():
        embeds = torch.stack([prompts[i] for i in members])  # [G, n, d]
        positions = torch.arange(n, device=embeds.device).expand(len(members), n)
        cache = DynamicCache(config=hf_model.config)
        hf_model(
            inputs_embeds=embeds,
            position_ids=positions,
            **cache_kwargs(hf_model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        layers: list[Any] = list(cache.layers)  # DynamicLayers (checked by supports_prefix_cache)
        # [G, layers, 2, kv_heads, n, head_dim]: one copy for the group, then each prompt's own slice
        kv = torch.stack([torch.stack([layer.keys, layer.values], 1) for layer in layers], 1)
        for g, i in enumerate(members):
            out[i] = CachedPrompt(prompts[i], kv[g].clone())  # its own storage: the cache evicts it alone
    return [c for c in out if c is not None]


def prefix_batch(
    hf_model: Any, prefixes: Sequence[CachedPrompt | None], pad_multiple: int
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """A batch cache holding each row's prefix, left-padded to a common width P.

    Returns (cache, mask [B, P] with 1 on real prefix positions, offsets [B] = each row's prefix length,
    the position of its first token).
    """
    lengths = [p.n_tokens if p is not None else 0 for p in prefixes]
    width = round_up(max(lengths), pad_multiple)
    ref = next(p for p in prefixes if p is not None)
    device = ref.prompt.device
    n_layers, _, heads, _, head_dim = ref.kv.shape
    # one batch tensor [layers, 2, B, kv_heads, width, head_dim]; each length group lands in one copy
    batch = ref.kv.new_zeros(n_layers, 2, len(prefixes), heads, width, head_dim)
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        if n:
            groups.setdefault(n, []).append(i)
    staging = Staging(device)
    staged = {n: staging.add(rows) for n, rows in groups.items()}
    offsets = staging.add(lengths)
    for n, rows in groups.items():
        group = torch.stack([prefixes[i].kv for i in rows], 2)  # type: ignore[union-attr]  # [L, 2, G, H, n, D]
        batch[:, :, staging[staged[n]], :, width - n :] = group
    cache = DynamicCache(config=hf_model.config)
    for layer in range(n_layers):
        cache.update(batch[layer, 0], batch[layer, 1], layer)
    lengths_t = staging[offsets]
    mask = (torch.arange(width, device=device)[None, :] >= width - lengths_t[:, None]).long()
    return cache, mask, lengths_t
