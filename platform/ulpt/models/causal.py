"""Decoder-only base models (Llama-style): the prompt, the input and the output in one sequence.

Rows are left-padded with explicit position ids, so every row's next token sits at the same column
and each row sees the positions it would see alone. A row whose prompt comes with cached keys and
values (`CachedPrompt`) starts after them instead of running its prompt again (see `models.prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from transformers import DynamicCache

from ulpt.models.base import BaseModel, Decoding, PromptSource, RowSource, TeacherForcing
from ulpt.models.batch import RowPrompts, StagedGrid, StagedTokens
from ulpt.models.cachearg import cache_kwargs
from ulpt.models.prefix import CachedPrompt, compute_prefixes, prefix_batch, supports_prefix_cache
from ulpt.models.transfer import Staging


@dataclass
class CausalDecoding(Decoding):
    positions: torch.Tensor  # [B, 1] position of each row's last token

    def select(self, index: torch.Tensor) -> None:
        super().select(index)
        self.positions = self.positions.index_select(0, index)


class CausalModel(BaseModel):
    family = "causal"
    is_encoder_decoder = False
    left_pad = True

    @cached_property
    def supports_prefix_cache(self) -> bool:
        """Decoder-only models whose every layer keeps its whole past (no sliding windows)."""
        return supports_prefix_cache(self.hf)

    @torch.no_grad()
    def cache_prompts(self, sources: Sequence[PromptSource]) -> list[CachedPrompt]:
        if not self.supports_prefix_cache:
            return super().cache_prompts(sources)
        prompts = [self._prompt(s) for s in sources]
        if any(p is None for p in prompts):
            raise ValueError("cache_prompts needs a prompt for every source")
        return compute_prefixes(self.hf, [p for p in prompts if p is not None])

    @cached_property
    def explicit_mask(self) -> bool:
        """Whether a batch without a cache may pass its own 4D causal mask: transformers builds one from
        the 2D mask only after asking whether the padding mask is all ones, a host read (and on CUDA a
        sync) per forward pass. Only where that mask is exact: eager or SDPA attention, no sliding window."""
        return self.supports_prefix_cache and self.hf.config._attn_implementation in ("eager", "sdpa")

    def target_separator(self, input_text: str) -> str:
        """A space unless the input ends in one: the target continues the same text."""
        return "" if not input_text or input_text[-1].isspace() else " "

    def prefill(
        self,
        sources: Sequence[RowSource] | RowPrompts,
        input_ids: Sequence[Sequence[int]] | StagedTokens,
        *,
        keep: int = 1,
        use_cache: bool = True,
    ) -> CausalDecoding:
        """`keep`: how many last positions' logits to compute (all of them cost a vocabulary each).

        Rows with a cached prefix and some input after it skip their prompt; other rows run it inline.
        """
        prefixes: list[CachedPrompt | None] = [None] * len(input_ids)
        if not isinstance(sources, RowPrompts) and use_cache:
            counts = input_ids.token_counts if isinstance(input_ids, StagedTokens) else map(len, input_ids)
            prefixes = [s if isinstance(s, CachedPrompt) and n else None for s, n in zip(sources, counts)]
            sources = [None if c is not None else s for c, s in zip(prefixes, sources)]
        packed = self._pack(sources, input_ids)
        mask, position_ids = packed.attention_mask, packed.position_ids
        cache: Any = DynamicCache() if use_cache else None
        if any(c is not None for c in prefixes):
            cache, prefix_mask, offsets = prefix_batch(self.hf, prefixes, self.pad_multiple)
            mask = torch.cat([prefix_mask, mask], dim=1)
            position_ids = position_ids + offsets[:, None]
        attention = mask
        if not use_cache and self.explicit_mask:  # teacher forcing (training): no host sync in the mask
            attention = causal_mask(mask, packed.inputs_embeds.dtype)
        logits = self.hf(
            inputs_embeds=packed.inputs_embeds,
            attention_mask=attention,
            position_ids=position_ids,
            **cache_kwargs(self.hf, cache),
            use_cache=use_cache,
            logits_to_keep=keep,
        ).logits
        return CausalDecoding(logits, cache, mask, position_ids[:, -1:])

    def step(self, state: Decoding, feed: torch.Tensor) -> torch.Tensor:
        """Right-padded feeds are fine on a last step: causal attention keeps padding after real tokens."""
        assert isinstance(state, CausalDecoding)
        width = feed.shape[1]
        state.mask = torch.cat([state.mask, state.mask.new_ones(feed.shape[0], width)], dim=1)
        positions = state.positions + 1 + torch.arange(width, device=state.positions.device)
        logits = self.hf(
            input_ids=feed,
            attention_mask=state.mask,
            position_ids=positions,
            **cache_kwargs(self.hf, state.cache),
            use_cache=True,
        ).logits
        state.positions = positions[:, -1:]
        state.logits = logits
        return logits

    def _stage_targets(
        self,
        prompt_lengths: Sequence[int],
        input_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        staging: Staging,
    ) -> TeacherForcing:
        """Input and target in one sequence; targets and their mask left-padded like the rows."""
        rows = [[*i, *t] for i, t in zip(input_ids, target_ids)]
        return TeacherForcing(
            StagedTokens.stage(prompt_lengths, rows, staging),
            StagedGrid.stage(target_ids, self.pad_id, left=True, staging=staging),
            StagedGrid.stage([[1] * len(t) for t in target_ids], 0, left=True, staging=staging),
        )

    def _teacher_forced(self, prompts: RowPrompts, forcing: TeacherForcing) -> torch.Tensor:
        """The last K + 1 positions' logits, less the last one (only they reach the LM head)."""
        k = forcing.targets.width
        return self.prefill(prompts, forcing.tokens, keep=k + 1, use_cache=False).logits[:, :k]


def causal_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive mask from a [B, T] padding mask: position i attends real positions j <= i.

    Built on the device from the padding mask, so nothing is read back to the host. A padding query
    row attends nothing real; its large negative (not -inf) entries keep its softmax finite.
    """
    width = mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()  # [T, T]
    allowed = causal[None, None] & mask.bool()[:, None, None, :]  # [B, 1, T, T]
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
