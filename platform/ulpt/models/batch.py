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

from collections.abc import Sequence
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


def pack_rows(
    prompts: Sequence[torch.Tensor | None],
    token_embeds: Sequence[torch.Tensor],
    *,
    left_pad: bool,
    pad_multiple: int = 1,
) -> PackedInputs:
    """Concatenate each row's prompt [n_i, d] with its token embeddings [len_i, d] and pad."""
    rows = [
        emb if p is None else torch.cat([p.to(emb.dtype), emb], dim=0)
        for p, emb in zip(prompts, token_embeds)
    ]
    lengths = [r.shape[0] for r in rows]
    width = round_up(max(lengths), pad_multiple)
    hidden = rows[0].shape[1]
    ref = rows[0]
    embeds = ref.new_zeros(len(rows), width, hidden)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=ref.device)
    for i, row in enumerate(rows):
        span = slice(width - row.shape[0], width) if left_pad else slice(0, row.shape[0])
        embeds[i, span] = row
        mask[i, span] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return PackedInputs(embeds, mask, positions, lengths)


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
        widest = max(lengths[index], *(lengths[i] for i in current)) if current else lengths[index]
        if current and (len(current) + 1 > max_rows or (len(current) + 1) * widest > max_tokens):
            chunks.append(current)
            current = []
        current.append(index)
    if current:
        chunks.append(current)
    return chunks
