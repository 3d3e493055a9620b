"""The model runner of a replica: one frozen base model decoding batches whose rows use different adapters.

The adapter cache hands each row its prompt (with its cached key/value prefix where the model allows),
and `BaseModel.iter_generate` decodes every row of the batch in the same forward passes, each row with
its own sampling parameters and stopping on its own. A row whose reader went away leaves at the next
step, and a row that cannot be decoded fails alone. Nothing here knows about HTTP or Ray.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

from ulpt.models import BaseModel, Generation, SamplingParams
from ulpt.models.base import RowSource
from ulpt.models.detokenize import REPLACEMENT, stop_prefix_overlap
from ulpt.models.output import OutputText
from ulpt_serving.cache import AdapterCache, CompactAdapter, HotPrompt
from ulpt_serving.config import ServeConfig

TOKEN_COUNT_CHUNK = 16_384
"""Characters tokenized at a time when a text may be far over the limit: a tokenizer's memory grows with
its output (~160 bytes a token), so a 4 MiB prompt tokenized whole can cost a replica about 1 GB."""
CHUNK_SLACK = 4
"""Tokens a chunk may count beyond its share of the whole: its own special tokens and a split word."""


class RowControl:
    """What a row's reader and the decode loop share: whether anyone still reads it, what it cost.

    The reader calls `abandon` when it stops reading early (a disconnected client, a failed sibling);
    the decode thread sees `abandoned` after the current step and drops the row. The server's batch
    loop counts `generated` (tokens decoded for the row, read or not) and calls `release` once the row
    has left the batch, which hands that count to `abandon`'s callback: a request log then records
    the work a request really caused, not just what reached the client.
    """

    def __init__(self) -> None:
        self.abandoned = threading.Event()
        self.generated = 0
        self.joined = False
        self.released = False
        self._on_release: Callable[[int], None] | None = None

    def abandon(self, on_release: Callable[[int], None] | None = None) -> None:
        """Stop decoding this row; `on_release(generated)` runs once it has left its batch (at once if it
        already left, or never joined one: a reader cancelled while queued is dropped by the batcher)."""
        self._on_release = on_release
        self.abandoned.set()
        if self.released or not self.joined:
            self._notify()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._notify()

    def _notify(self) -> None:
        callback, self._on_release = self._on_release, None
        if callback is not None:
            callback(self.generated)


@dataclass(frozen=True)
class RowFailure:
    """Stands in a step for a row that could not be decoded; the other rows of its batch go on."""

    error: BaseException


@dataclass(frozen=True, eq=False)
class BatchItem:
    """One row as the batcher carries it: the adapter (already loaded and checked), the text, the decoding."""

    text: str
    params: SamplingParams
    adapter_key: str | None = None
    """Cache key (the catalog id) of the adapter; None for the bare base model."""
    adapter: CompactAdapter | None = None
    control: RowControl = field(default_factory=RowControl, repr=False)
    token_ids: tuple[int, ...] | None = None
    """The text's token ids when admission already tokenized it (the text is then not encoded again)."""


class Engine:
    """A base model plus the adapter cache that feeds it."""

    def __init__(self, model: BaseModel, cache: AdapterCache) -> None:
        self.model = model
        self.cache = cache

    @classmethod
    def create(cls, model: BaseModel, config: ServeConfig | None = None) -> Engine:
        config = config or ServeConfig()
        use_prefix = config.prefix_cache and model.supports_prefix_cache

        def prepare(adapters: Sequence[CompactAdapter]) -> list[HotPrompt]:
            prompts = [a.materialize() for a in adapters]
            if use_prefix:
                return [cached for cached in model.cache_prompts(prompts)]
            return [prompt for prompt in prompts]

        cache = AdapterCache.sized_by(config, prepare)
        return cls(model, cache)

    def tokenize(self, text: str, limit: int) -> list[int] | None:
        """Token ids of `text`, or None once it certainly has more than `limit`: a long text is counted chunk
        by chunk first, so one that is far too long is refused without ever being tokenized whole. The ids
        travel with the request to the decode loop, so an admitted text is tokenized once."""
        if len(text) > TOKEN_COUNT_CHUNK:
            total = 0
            for chunks, start in enumerate(range(0, len(text), TOKEN_COUNT_CHUNK), 1):
                total += len(self.model.encode(text[start : start + TOKEN_COUNT_CHUNK]))
                if total > limit + CHUNK_SLACK * chunks:
                    return None
        return self.model.encode(text)

    def steps(self, items: Sequence[BatchItem]) -> Iterator[dict[int, int | RowFailure]]:
        """Decode `items` as ONE batch; yields {row: token id} per step for the rows still running.

        A generator: nothing (not even preparing cold adapters' prefixes) runs before the first `next`,
        so a server can run all of it in its decode thread. It never raises for its rows: when preparing
        or prefilling the batch fails, every row is tried alone to find the ones at fault, which get a
        `RowFailure` while the others decode together; a failure later, in a step that all rows share,
        gives a `RowFailure` to each row still running.
        """
        rows = list(range(len(items)))
        failed: dict[int, int | RowFailure] = {}
        decoding = self._decode(items, rows)
        try:
            first = next(decoding, None)
        except Exception as exc:
            failed.update({rows[0]: RowFailure(exc)} if len(rows) == 1 else self._failing_alone(items, rows))
            if not failed:  # each row starts alone, yet not together: no single row is to blame
                failed.update({i: RowFailure(exc) for i in rows})
            rows = [i for i in rows if i not in failed]
            decoding = self._decode(items, rows)
            try:
                first = next(decoding, None) if rows else None  # the rows that started alone, together
            except Exception as again:
                failed.update({i: RowFailure(again) for i in rows})
                first = None
        running: list[int] = []
        try:
            step = first
            if failed:
                yield {**failed, **(step or {})}
                running = list(step or {})
                step = next(decoding, None) if step is not None else None
            while step is not None:
                running = list(step)
                yield dict(step)
                step = next(decoding, None)
        except Exception as exc:
            yield {i: RowFailure(exc) for i in running}

    def _decode(self, items: Sequence[BatchItem], rows: list[int]) -> Generator[dict[int, int], None, None]:
        """`items[rows]` through `iter_generate`, steps keyed by index into `items`."""
        chosen = [items[i] for i in rows]
        sources: list[RowSource] = list(
            self.cache.prompts(
                [
                    (it.adapter_key, it.adapter)
                    if it.adapter_key is not None and it.adapter is not None
                    else None
                    for it in chosen
                ]
            )
        )

        def abandoned() -> list[int]:
            return [k for k, it in enumerate(chosen) if it.control.abandoned.is_set()]

        generation = self.model.iter_generate(
            [
                (source, it.text if it.token_ids is None else it.token_ids)
                for source, it in zip(sources, chosen)
            ],
            [it.params for it in chosen],
            abandoned,
        )
        for step in generation:
            yield {rows[k]: token for k, token in step.items()}

    def _failing_alone(self, items: Sequence[BatchItem], rows: list[int]) -> dict[int, RowFailure]:
        """The rows whose preparation and first step fail on their own (each costs one solo prefill)."""
        failed: dict[int, RowFailure] = {}
        for i in rows:
            alone = self._decode(items, [i])
            try:
                next(alone, None)
            except Exception as exc:
                failed[i] = RowFailure(exc)
            finally:
                alone.close()
        return failed

    def generate(self, items: Sequence[BatchItem]) -> list[Generation]:
        """Whole generations of one batch (benchmarks and tests; the server streams `steps`).

        A row that fails raises its error here: callers of this want every row or nothing.
        """
        streams = [TextStream(self.model, it.params, incremental=False) for it in items]
        for step in self.steps(items):
            for i, token in step.items():
                if isinstance(token, RowFailure):
                    raise token.error
                streams[i].push(token)
        return [s.generation() for s in streams]


class TextStream(OutputText):
    """One row's tokens as text: deltas safe to stream now, and the same final text as `generate`.

    The final text drops a trailing EOS and is cut before the first stop string. While streaming, text
    that might still turn into a stop string, or that ends in an incomplete character, is held back.
    Each token costs a decode of a few trailing tokens (`IncrementalDetokenizer`), not of the whole text.
    """

    def __init__(self, model: BaseModel, params: SamplingParams, *, incremental: bool = True) -> None:
        """`incremental=False` (a whole answer, not a stream) decodes text only when stop strings need it."""
        super().__init__(model.tokenizer, params, model.eos_ids, every_token=incremental)
        self.incremental = incremental
        self.sent = ""
        self.done = False
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        """Add a token; return the text that became final (possibly empty)."""
        self.add(token)
        if self.stopped:
            self.done, self.finish_reason = True, "stop"
        elif len(self.token_ids) >= self.params.max_new_tokens:
            self.done, self.finish_reason = True, "length"
        if not self.incremental and not self.params.stop:
            return ""
        if self.done:
            return self._advance(self.text)
        safe = self.text.rstrip(REPLACEMENT)
        hold = stop_prefix_overlap(safe, self.params.stop)
        return self._advance(safe[: len(safe) - hold])

    def finish(self) -> str:
        """Whatever is left to send when the batch ended without this row saying it stopped."""
        if not self.done:
            self.done = True
            self.finish_reason = "length"
        return self._advance(self.text)

    def generation(self) -> Generation:
        self.finish()
        return Generation(self.sent, list(self.token_ids), self.finish_reason or "length")

    def _advance(self, text: str) -> str:
        # Detokenization is almost always prefix-stable; if it is not, hold back rather than resend.
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta = text[len(self.sent) :]
        self.sent = text
        return delta
