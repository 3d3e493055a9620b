"""Mixed-adapter batches: many rows, each with its own prompt (or none), in ONE forward pass.

Reference semantics (what every vectorized batch below must equal, row by row, to float noise):

    for prompt, ids in rows:
        x = cat([prompt, embed(ids)])          # [n_i + len_i, d]
        out_i = model(inputs_embeds=x[None])   # the row alone

Decoder-only rows are LEFT-padded (so every row's last token is at the same position, which makes
decoding and `logits_to_keep` simple) with explicit position ids, so that models with absolute
positions see the same positions as alone. Encoder rows are right-padded; the mask hides padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ulpt.models.transfer import Staged, Staging, host_to_device


@dataclass
class PackedInputs:
    """A padded batch of embedded rows."""

    inputs_embeds: torch.Tensor  # [B, T, d]
    attention_mask: torch.Tensor  # [B, T] 1 = real position
    position_ids: torch.Tensor  # [B, T]
    lengths: list[int]  # real length of each row (prompt + tokens)


def round_up(length: int, multiple: int) -> int:
    """Pad lengths to a few fixed sizes: every new shape costs a slow first pass on CPU."""
    return -(-length // multiple) * multiple if multiple > 1 else length


@dataclass
class RowPrompts:
    """The prompts of a batch's rows, concatenated: row i owns the next `lengths[i]` rows of `embeds`.

    One tensor for the whole batch instead of one per row, so packing costs a few tensor ops
    however many adapters the batch mixes. A length of 0 is a row without a prompt.
    """

    embeds: torch.Tensor | None  # [sum(lengths), d]
    lengths: list[int]

    @classmethod
    def of(cls, prompts: Sequence[torch.Tensor | None]) -> RowPrompts:
        present = [p for p in prompts if p is not None]
        lengths = [0 if p is None else int(p.shape[0]) for p in prompts]
        return cls(torch.cat(present) if present else None, lengths)


@dataclass
class StagedTokens:
    """The token ids of a batch's rows and each row's prompt length, staged for the device
    (`models.transfer`): shapes come from the host integers, values from the step's one copy."""

    prompt_lengths: list[int]
    token_counts: list[int]
    staging: Staging
    prompt_len: Staged  # [B]
    token_len: Staged  # [B]
    flat_ids: Staged  # [sum(token_counts)] every row's ids, row after row

    @classmethod
    def stage(
        cls, prompt_lengths: Sequence[int], input_ids: Sequence[Sequence[int]], staging: Staging
    ) -> StagedTokens:
        counts = [len(ids) for ids in input_ids]
        flat = [t for ids in input_ids for t in ids]
        return cls(
            list(prompt_lengths),
            counts,
            staging,
            staging.add(prompt_lengths),
            staging.add(counts),
            staging.add(flat),
        )

    def __len__(self) -> int:
        return len(self.token_counts)


@dataclass
class StagedGrid:
    """A [rows, width] padded long tensor staged for the device (targets, their mask, decoder inputs)."""

    staging: Staging
    handle: Staged
    rows: int
    width: int

    @classmethod
    def stage(
        cls, seqs: Sequence[Sequence[int]], pad_value: int, *, left: bool, staging: Staging
    ) -> StagedGrid:
        width = max(len(s) for s in seqs)
        flat = [t for row in _padded(seqs, pad_value, width, left) for t in row]
        return cls(staging, staging.add(flat), len(seqs), width)

    def tensor(self) -> torch.Tensor:
        return self.staging[self.handle].view(self.rows, self.width)


def pack_rows(
    prompts: RowPrompts,
    tokens: StagedTokens,
    embed: Callable[[torch.Tensor], torch.Tensor],
    *,
    left_pad: bool,
    pad_id: int,
    device: torch.device,
    pad_multiple: int = 1,
) -> PackedInputs:
    """Each row's prompt followed by its embedded tokens, padded into one [B, T, d] batch.

    The token ids of all rows are embedded in one call and the prompts scattered into their
    positions in one more: no tensor op per row, and no host-to-device copy of its own (`tokens`
    come staged with the rest of the step). Padding positions hold zeros.
    """
    n_prompt = prompts.lengths
    if n_prompt != tokens.prompt_lengths:
        raise ValueError("the prompts' lengths differ from those the tokens were staged with")
    n_tokens = tokens.token_counts
    lengths = [a + b for a, b in zip(n_prompt, n_tokens)]
    width = round_up(max(lengths), pad_multiple)
    prompt_len = tokens.staging[tokens.prompt_len]  # [B]
    token_len = tokens.staging[tokens.token_len]  # [B]
    real = prompt_len + token_len
    first = width - real if left_pad else torch.zeros_like(real)  # [B] first real position of each row
    cols = torch.arange(width, device=device)[None, :]  # [1, T]
    end = (first + real)[:, None]
    mask = ((cols >= first[:, None]) & (cols < end)).long()  # [B, T]
    is_token = (cols >= (first + prompt_len)[:, None]) & (cols < end)  # [B, T]
    flat_ids = tokens.staging[tokens.flat_ids]
    grid = torch.full((len(lengths) * width,), pad_id, dtype=torch.long, device=device)
    grid.index_copy_(0, _spans(first + prompt_len, token_len, width, sum(n_tokens)), flat_ids)
    embeds = embed(grid.view(len(lengths), width)).masked_fill(~is_token[..., None], 0.0)  # [B, T, d]
    if prompts.embeds is not None:
        hidden = embeds.shape[-1]
        # Cast where the prompts meet the token embeddings: gradients reach float32 master weights.
        embeds = (
            embeds.view(-1, hidden)
            .index_copy(0, _spans(first, prompt_len, width, sum(n_prompt)), prompts.embeds.to(embeds.dtype))
            .view(len(lengths), width, hidden)
        )
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return PackedInputs(embeds, mask, positions, lengths)


def _spans(first: torch.Tensor, count: torch.Tensor, width: int, total: int) -> torch.Tensor:
    """Flat indices b * width + first[b] + j for every row b and j < count[b], row after row."""
    rows = torch.repeat_interleave(torch.arange(len(count), device=count.device), count, output_size=total)
    run_start = torch.cumsum(count, 0) - count  # where each row's run begins in the flat order
    within = torch.arange(total, device=count.device) - run_start[rows]
    return rows * width + first[rows] + within


def pad_ids(
    seqs: Sequence[Sequence[int]], pad_value: int, *, left: bool, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """[B, max_len] token ids, padded on the left or the right with `pad_value`.

    Padded on the host and copied to `device` once: one transfer per batch, not one per row.
    """
    width = max(len(s) for s in seqs)
    flat = [t for row in _padded(seqs, pad_value, width, left) for t in row]
    return host_to_device(flat, torch.device(device)).view(len(seqs), width)


def _padded(seqs: Sequence[Sequence[int]], pad_value: int, width: int, left: bool) -> list[list[int]]:
    pads = [[pad_value] * (width - len(s)) for s in seqs]
    return [[*pad, *s] if left else [*s, *pad] for s, pad in zip(seqs, pads)]


def plan_chunks(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Group row indices into forward passes of similar length.

    Rows are sorted by length, then cut so that a chunk holds at most `max_rows` rows and at most
    `max_tokens` padded positions: a long row no longer pads fifteen short ones to its length.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        widest = lengths[index]  # rows come shortest first: the newest row is the widest
        if current and (len(current) + 1 > max_rows or (len(current) + 1) * widest > max_tokens):
            chunks.append(current)
            current = []
        current.append(index)
    if current:
        chunks.append(current)
    return chunks
