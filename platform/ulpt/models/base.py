"""`BaseModel`: one frozen base model that runs rows of many different adapters in one batch.

Every use of the model goes through two primitives each family implements once (`models.causal`,
`models.seq2seq`):

    state = model.prefill(sources, input_ids)   # each row's prompt + input; state.logits predict token 1
    logits = model.step(state, feed)            # [B, L] more tokens per row -> [B, L, V]
    state.select(index)                         # keep, reorder or repeat rows

Scoring, continuation log-probabilities and generation below are written once over them, which is
what a continuous-batching server needs too: admit rows with `prefill`, advance them with `step`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ulpt.adapters import Adapter
from ulpt.models.batch import PackedInputs, RowPrompts, StagedGrid, StagedTokens, pack_rows, pad_ids
from ulpt.models.decode import decode_rows
from ulpt.models.fingerprint import state_fingerprint, weights_fingerprint
from ulpt.models.output import Generation, OutputText, eos_token_ids
from ulpt.models.prefix import CachedPrompt
from ulpt.models.sampling import SamplingParams
from ulpt.models.transfer import Staging

PromptSource = Adapter | torch.Tensor | None
"""An adapter, an already materialized [n, d] prompt, or None for the bare base model."""
RowSource = PromptSource | CachedPrompt
"""What a row may carry: also a prompt with its cached keys and values (`cache_prompts`)."""
RowInput = str | Sequence[int]
"""A row's input as text, or as the token ids it was already encoded to (so it is tokenized once)."""
Row = tuple[RowSource, RowInput]


@dataclass
class Decoding:
    """A batch between steps: its key/value cache, attention mask and the logits of its last positions."""

    logits: torch.Tensor  # [B, K, V] for the last K positions fed (K = 1 while generating)
    cache: Any
    mask: torch.Tensor  # [B, T] 1 = a real position the next tokens attend to

    def select(self, index: torch.Tensor) -> None:
        """Keep rows `index` [B'] (a long tensor on the model's device; repeats copy a row).

        Subclasses select their own per-row tensors after this."""
        if self.cache is not None:
            self.cache.batch_select_indices(index)
        self.mask = self.mask.index_select(0, index)


@dataclass
class TeacherForcing:
    """A batch's inputs and targets staged for the device (`models.transfer`), so a training step
    copies every chunk's ids in one transfer before its first forward pass."""

    tokens: StagedTokens  # what the forward pass embeds (decoder-only: input ⊕ target; T5: the input)
    targets: StagedGrid  # [B, K] target ids
    mask: StagedGrid  # [B, K] 1 = a real target
    decoder_ids: StagedGrid | None = None  # [B, K] T5: the start token and every target but the last


class BaseModel(ABC):
    """A frozen transformers model plus its tokenizer; decoder-only or encoder-decoder (T5-style)."""

    family: str
    is_encoder_decoder: bool
    left_pad: bool
    """Decoder-only rows are left-padded so every row's last token sits at the same position."""

    def __init__(
        self,
        hf_model: Any,
        tokenizer: Any,
        name: str,
        path: Path | None = None,
        pad_multiple: int = 8,
        fingerprint: str | None = None,
    ):
        """`fingerprint`: the weight files' digest when they are not at `path` (shared weights)."""
        self.hf = hf_model.eval().requires_grad_(False)
        self.shared_weights = False
        """True when the weights are read-only views of a node-wide copy (`ulpt.models.shared`)."""
        if fingerprint is not None:
            self.__dict__["fingerprint"] = fingerprint  # the cached_property's slot
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.pad_multiple = pad_multiple
        self.hidden_size = int(hf_model.get_input_embeddings().weight.shape[1])
        self.eos_ids = eos_token_ids(hf_model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)

    # ---- the two primitives ------------------------------------------------------------------

    @abstractmethod
    def prefill(
        self, sources: Sequence[RowSource] | RowPrompts, input_ids: Sequence[Sequence[int]]
    ) -> Decoding:
        """Run each row's prompt and input once; `logits[:, -1]` predicts each row's first new token."""

    @abstractmethod
    def step(self, state: Decoding, feed: torch.Tensor) -> torch.Tensor:
        """Feed [B, L] more tokens per row (right padding allowed on a last step); return [B, L, V]."""

    @abstractmethod
    def _stage_targets(
        self,
        prompt_lengths: Sequence[int],
        input_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        staging: Staging,
    ) -> TeacherForcing:
        """The ids `_teacher_forced` reads, added to `staging` (host work only, no device copy)."""

    @abstractmethod
    def _teacher_forced(self, prompts: RowPrompts, forcing: TeacherForcing) -> torch.Tensor:
        """Logits [B, K, V] of every target position of `forcing`, in one forward pass."""

    @property
    def device(self) -> torch.device:
        return self.hf.get_input_embeddings().weight.device

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def token_embeddings(self) -> torch.Tensor:
        """[vocab, d] input embedding matrix (for prompt initialisation from vocabulary rows)."""
        return self.hf.get_input_embeddings().weight

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the weight files (or the in-memory weights) so adapters name the exact base."""
        files = sorted(self.path.glob("*.safetensors")) if self.path else []
        return weights_fingerprint(files) if files else state_fingerprint(self.hf.state_dict())

    def encode(self, text: str) -> list[int]:
        """Token ids of an input text, with the tokenizer's own special tokens."""
        return list(self.tokenizer(text).input_ids)

    def _input_ids(self, row_input: RowInput) -> list[int]:
        return self.encode(row_input) if isinstance(row_input, str) else list(row_input)

    def target_separator(self, input_text: str) -> str:
        """Text put between an input and its target when the target is tokenized on its own."""
        return ""

    def encode_target(self, input_text: str, target: str, eos: bool = True) -> list[int]:
        """Token ids the model should produce after `input_text`, ending with EOS unless `eos=False`."""
        text = self.target_separator(input_text) + target
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return [*ids, min(self.eos_ids)] if eos or not ids else ids

    def _prompt(self, source: RowSource) -> torch.Tensor | None:
        if source is None:
            return None
        if isinstance(source, CachedPrompt):
            return source.prompt
        prompt = source.prompt_embeddings() if isinstance(source, Adapter) else source
        if prompt.shape[-1] != self.hidden_size:
            raise ValueError(
                f"prompt width {prompt.shape[-1]} does not match the model's hidden size {self.hidden_size}"
            )
        # Cast where the prompt meets the token embeddings: autograd carries the gradient back to the
        # adapter's float32 parameters (master weights), whatever dtype the frozen base runs in.
        return prompt.to(device=self.device, dtype=self.token_embeddings.dtype)

    @property
    def supports_prefix_cache(self) -> bool:
        """Whether `cache_prompts` applies: decoder-only models without sliding-window layers."""
        return False

    def cache_prompts(self, sources: Sequence[PromptSource]) -> list[CachedPrompt]:
        """Each prompt with its per-layer keys and values, to reuse across requests (see `models.prefix`)."""
        raise ValueError(f"{self.name}: prefix caching needs a decoder-only model without sliding windows")

    def _row_prompts(self, prompts: Sequence[RowSource] | RowPrompts) -> RowPrompts:
        if not isinstance(prompts, RowPrompts):
            return RowPrompts.of([self._prompt(p) for p in prompts])
        if prompts.embeds is not None and prompts.embeds.shape[-1] != self.hidden_size:
            raise ValueError(
                f"prompt width {prompts.embeds.shape[-1]} does not match the model's hidden size "
                f"{self.hidden_size}"
            )
        return prompts

    def _pack(
        self, prompts: Sequence[RowSource] | RowPrompts, input_ids: Sequence[Sequence[int]] | StagedTokens
    ) -> PackedInputs:
        prompts = self._row_prompts(prompts)
        if not isinstance(input_ids, StagedTokens):
            input_ids = StagedTokens.stage(prompts.lengths, input_ids, Staging(self.device))
        return pack_rows(
            prompts,
            input_ids,
            self.hf.get_input_embeddings(),
            left_pad=self.left_pad,
            pad_id=self.pad_id,
            device=self.device,
            pad_multiple=self.pad_multiple,
        )

    # ---- scoring and training ------------------------------------------------------------------

    def target_logprobs(
        self,
        prompts: Sequence[PromptSource] | RowPrompts,
        input_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of every target token, for a mixed batch; differentiable in the prompts.

        Returns (logp [B, K], mask [B, K]) with K the longest target. All targets go through one
        teacher-forced forward pass (in decoder-only models only the K positions that predict targets
        reach the LM head, which matters with a 50k vocabulary).
        """
        rows = self._row_prompts(prompts)
        forcing = self.stage_targets(rows.lengths, input_ids, target_ids, Staging(self.device))
        return self.staged_target_logprobs(rows, forcing)

    def stage_targets(
        self,
        prompt_lengths: Sequence[int],
        input_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        staging: Staging,
    ) -> TeacherForcing:
        """Stage a batch for `staged_target_logprobs`: a training step stages all its chunks, then
        their ids reach the device in one copy."""
        if any(len(t) == 0 for t in target_ids):
            raise ValueError("every row needs at least one target token")
        return self._stage_targets(prompt_lengths, input_ids, target_ids, staging)

    def staged_target_logprobs(
        self, prompts: RowPrompts, forcing: TeacherForcing
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`target_logprobs` of a staged batch whose prompts have `stage_targets`'s lengths."""
        logits = self._teacher_forced(self._row_prompts(prompts), forcing)
        mask = forcing.mask.tensor()
        logp = _pick(logits, forcing.targets.tensor())  # float32 whatever the base's dtype
        return logp * mask, mask

    @torch.no_grad()
    def continuation_logprobs(
        self,
        prompts: Sequence[RowSource],
        input_ids: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
    ) -> list[list[torch.Tensor]]:
        """Per-token log-probabilities of several continuations of each row, sharing the row's prefix.

        The prompt + input of each row goes through the model ONCE (`prefill`); each of its
        continuations (a target, or every candidate label) then costs only its own few tokens (one
        `step` over copies of the rows). This is what makes multiple-choice evaluation affordable on
        CPU. Equals `target_logprobs` of each (row, continuation) pair to float noise.
        """
        pairs = [(row, seq) for row, seqs in enumerate(continuations) for seq in seqs]
        if any(len(seq) == 0 for _, seq in pairs):
            raise ValueError("every continuation needs at least one token")
        state = self.prefill(prompts, input_ids)
        index = torch.tensor([row for row, _ in pairs], dtype=torch.long, device=self.device)
        firsts = index.new_tensor([[seq[0]] for _, seq in pairs])
        token_logp = _pick(state.logits[:, -1].index_select(0, index)[:, None], firsts)  # [P, 1]
        rest = [list(seq[:-1]) for _, seq in pairs]
        if max(len(r) for r in rest):
            state.select(index)
            feed = pad_ids([r or [self.pad_id] for r in rest], self.pad_id, left=False, device=self.device)
            wanted = pad_ids(
                [seq[1:] or [self.pad_id] for _, seq in pairs], self.pad_id, left=False, device=self.device
            )
            token_logp = torch.cat([token_logp, _pick(self.step(state, feed), wanted)], dim=1)  # [P, 1 + L]
        out: list[list[torch.Tensor]] = [[] for _ in continuations]
        for i, (row, seq) in enumerate(pairs):
            out[row].append(token_logp[i, : len(seq)])
        return out

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> torch.Tensor:
        """Next-token logits [B, vocab] after each row's input, all rows in one forward pass.

        Prompts go inline even when a cached prefix comes with them, so scores equal `target_logprobs`.
        """
        sources = [s.prompt if isinstance(s, CachedPrompt) else s for s, _ in rows]
        state = self.prefill(sources, [self._input_ids(row_input) for _, row_input in rows])
        return state.logits[:, -1].float()

    # ---- generation --------------------------------------------------------------------------

    def generate(
        self,
        rows: Sequence[Row],
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """Generated text for each row; rows of different adapters share every forward pass."""
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop)
        )
        return [g.text for g in self.generate_batch(rows, [params] * len(rows))]

    @torch.no_grad()
    def generate_batch(self, rows: Sequence[Row], params: Sequence[SamplingParams]) -> list[Generation]:
        """Like `generate`, with per-row sampling parameters (what a server batch carries)."""
        outputs = [self.output_text(p) for p in params]
        for step in self.iter_generate(rows, params, outputs=outputs):
            for i, token in step.items():
                outputs[i].add(token)
        return [out.generation() for out in outputs]

    def output_text(self, params: SamplingParams, *, every_token: bool = False) -> OutputText:
        """A row's text, stop strings and finish reason as its tokens arrive (see `OutputText`)."""
        return OutputText(self.tokenizer, params, self.eos_ids, every_token=every_token)

    def iter_generate(
        self,
        rows: Sequence[Row],
        params: Sequence[SamplingParams],
        abandoned: Callable[[], Collection[int]] | None = None,
        outputs: Sequence[OutputText] | None = None,
    ) -> Iterator[dict[int, int]]:
        """Yield, at every decoding step, {row index: new token id} for the rows still running.

        One KV cache for the whole batch; each row stops on its own (EOS, a stop string or its
        max_new_tokens) and then leaves the batch's tensors; the loop ends when every row has stopped.
        `abandoned`, asked after every step, names rows nobody reads any more (a server's disconnected
        clients): they stop there too, so a batch of abandoned rows ends at once instead of decoding to
        max_new_tokens, and one abandoned row no longer costs its batch mates' forward passes.
        `outputs`: the caller's `OutputText`s, which it fills with each step's tokens before asking
        for the next one; the loop then reads stop strings there instead of detokenizing twice.
        A row with no input at all (no prompt and no text) has nothing to continue from and is refused.
        """
        return decode_rows(self, rows, params, abandoned, outputs)


def _pick(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids) [B, L] from logits [B, L, V] (a gather, in float32 whatever the model's dtype)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
