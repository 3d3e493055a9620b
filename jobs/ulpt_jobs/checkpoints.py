"""A worker's mid-fit checkpoints: its whole pack in one blob every K steps, read back on a new claim.

Every `train.checkpoint_every` steps of its pack a worker writes the state of every fit it holds
(`ulpt.training.checkpoint`) as ONE content-addressed blob to the store, then points those fits' rows
at it in one catalog statement. Blob first, row second: a crash in between leaves an orphan blob for
`ulpt gc`, and the rows still name the previous checkpoint, which is whole. A fit claimed again
(its worker died, or its job was cancelled and resumed) starts from the checkpoint its row names, so
a lost worker costs each of its fits at most K steps. `ulpt gc` keeps the checkpoints that pending or
running fits name; a fit that ends drops its pointer, and its old checkpoints become garbage.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence

from ulpt.catalog.db import Catalog
from ulpt.catalog.jobs import record_checkpoint
from ulpt.catalog.models import FitRow
from ulpt.errors import BlobIntegrityError, BlobNotFoundError
from ulpt.store import BlobStore
from ulpt.training import FitState
from ulpt.training import checkpoint as codec

log = logging.getLogger(__name__)


class PackCheckpoints:
    """Writes a pack's checkpoint every `every` steps (0: never) and restores claimed fits."""

    def __init__(self, catalog: Catalog, store: BlobStore, every: int) -> None:
        self.catalog = catalog
        self.store = store
        self.every = every
        self.steps = 0
        self.written = 0

    def step(self, groups: Mapping[str, Sequence[FitState]], rows: Mapping[str, FitRow]) -> str | None:
        """Count one step of the pack; every `every` steps, checkpoint its fits still training."""
        self.steps += 1
        if not self.every or self.steps % self.every:
            return None
        return self.save(groups, rows)

    def save(self, groups: Mapping[str, Sequence[FitState]], rows: Mapping[str, FitRow]) -> str | None:
        """Write one blob with every group that is still training, then point their rows at it."""
        training = {key: fits for key, fits in groups.items() if any(f.status == "running" for f in fits)}
        if not training:
            return None
        blob = self.store.put(codec.encode(training))
        ids: list[uuid.UUID] = [rows[key].id for key in training]
        with self.catalog.session() as session:
            record_checkpoint(session, ids, blob.key)
        self.written += 1
        return blob.key

    def restore(self, claimed: Sequence[tuple[FitRow, list[FitState]]]) -> None:
        """Put each claimed fit's last checkpoint (if its row names one) into its fresh FitStates.

        Fits of one pack share a blob: each blob is read once. A checkpoint gone from the store, or
        one that does not match the fit, is logged and the fit starts over (slower, never wrong).
        """
        blobs: dict[str, dict[str, list[codec.SavedFit]] | None] = {}
        for row, fits in claimed:
            if not row.checkpoint or not fits:
                continue
            if row.checkpoint not in blobs:
                blobs[row.checkpoint] = self._read(row.checkpoint)
            saved = (blobs[row.checkpoint] or {}).get(fits[0].group)  # saved under the runner's slot
            if saved is None:
                log.warning("fit %s: checkpoint %s lacks it; training from step 0", row.key, row.checkpoint)
                continue
            try:
                codec.restore(fits, saved)
            except codec.CheckpointError as exc:
                log.warning("fit %s: %s; training from step 0", row.key, exc)

    def _read(self, key: str) -> dict[str, list[codec.SavedFit]] | None:
        try:
            return codec.decode(self.store.get(key))
        except BlobNotFoundError:
            log.warning("checkpoint %s is missing from the store %s", key, self.store.url)
        except (BlobIntegrityError, codec.CheckpointError) as exc:
            log.warning("checkpoint %s: %s", key, exc)
        return None
