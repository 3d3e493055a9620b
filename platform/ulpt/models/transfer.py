"""Host lists to device tensors: staged on the host, copied to the device in one transfer.

On CUDA, `torch.tensor(python_list, device="cuda")` is a copy from pageable memory that synchronizes
the stream: the host waits for every queued kernel before it can build the next forward pass. A
packed training step needs a few small integer lists per forward chunk (token ids, lengths, row and
slot indices); `Staging` collects every list of the step first, then copies them all at once from
pinned memory with `non_blocking=True`, and hands out slices of the one device tensor. The host
keeps queuing work, and the step's only sync is the one that reads its losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NewType

import torch

Staged = NewType("Staged", int)
"""A list's place in its `Staging` (what `Staging.add` returns)."""


def host_to_device(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A long tensor of `values` on `device`: from pinned memory without a sync on CUDA.

    The only place a host list of integers becomes a device tensor in the packed step.
    """
    host = torch.tensor(values, dtype=torch.long, device="cpu")  # the host's, whatever the default device
    if device.type != "cuda":
        return host.to(device)  # the same tensor on the CPU
    return host.pin_memory().to(device, non_blocking=True)


class Staging:
    """Integer lists bound for one device, copied in one transfer when the first of them is read.

    `add` every list first, then read them with `staging[handle]`; a list added after a read starts
    a new transfer (correct, only slower), so callers stage everything of a step before computing.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._values: list[int] = []
        self._spans: list[tuple[int, int]] = []
        self._uploaded: torch.Tensor | None = None
        self._uploaded_count = 0  # values covered by `_uploaded`
        self.transfers = 0

    def add(self, values: Sequence[int]) -> Staged:
        self._spans.append((len(self._values), len(values)))
        self._values.extend(values)
        return Staged(len(self._spans) - 1)

    def __getitem__(self, handle: Staged) -> torch.Tensor:
        start, count = self._spans[handle]
        if self._uploaded is None or start + count > self._uploaded_count:
            self._upload()
        assert self._uploaded is not None
        return self._uploaded[start : start + count]

    def _upload(self) -> None:
        """Everything staged so far in one copy (re-sent values are those of an earlier, smaller copy)."""
        self._uploaded = host_to_device(self._values, self.device)
        self._uploaded_count = len(self._values)
        self.transfers += 1


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` copied to the CPU: the one device-to-host copy of a checkpoint part, made for a whole
    pack at once (each copy waits for the device, so one per fit would be one sync per fit)."""
    return tensor.detach().to("cpu")
