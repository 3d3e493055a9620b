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


def pack_rows(
    prompts: RowPrompts,
    input_ids: Sequence[Sequence[int]],
    embed: Callable[[torch.Tensor], torch.Tensor],
    *,
    left_pad: bool,
    pad_id: int,
    device: torch.device,
    pad_multiple: int = 1,
) -> PackedInputs:
    """Each row's prompt followed by its embedded tokens, padded into one [B, T, d] batch.

    The token ids of all rows are embedded in one call and the prompts scattered into their
    positions in one more: no tensor op per row. Padding positions hold zeros.
    """
    n_prompt = prompts.lengths
    n_tokens = [len(ids) for ids in input_ids]
    lengths = [a + b for a, b in zip(n_prompt, n_tokens)]
    width = round_up(max(lengths), pad_multiple)
    prompt_len = torch.tensor(n_prompt, dtype=torch.long, device=device)  # [B]
    token_len = torch.tensor(n_tokens, dtype=torch.long, device=device)  # [B]
    real = prompt_len + token_len
    first = width - real if left_pad else torch.zeros_like(real)  # [B] first real position of each row
    cols = torch.arange(width, device=device)[None, :]  # [1, T]
    end = (first + real)[:, None]
    mask = ((cols >= first[:, None]) & (cols < end)).long()  # [B, T]
    is_token = (cols >= (first + prompt_len)[:, None]) & (cols < end)  # [B, T]
    flat_ids = torch.tensor([t for ids in input_ids for t in ids], dtype=torch.long, device=device)
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
    pads = [[pad_value] * (width - len(s)) for s in seqs]
    rows = [[*pad, *s] if left else [*s, *pad] for s, pad in zip(seqs, pads)]
    return torch.tensor(rows, dtype=torch.long, device=device)


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
