"""`BaseModel`: one frozen base model that runs rows of many different adapters in one batch."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DynamicCache,
    EncoderDecoderCache,
)

from ulpt.adapters import Adapter
from ulpt.errors import ModelNotFoundError
from ulpt.models.batch import RowPrompts, pack_rows, pad_ids
from ulpt.models.precision import resolve_device, resolve_dtype
from ulpt.models.prefix import CachedPrompt, compute_prefixes, prefix_batch, supports_prefix_cache
from ulpt.models.sampling import RowSampler, SamplingParams

PromptSource = Adapter | torch.Tensor | None
"""An adapter, an already materialized [n, d] prompt, or None for the bare base model."""
RowSource = PromptSource | CachedPrompt
"""What a row may carry: also a prompt with its cached keys and values (`cache_prompts`)."""
Row = tuple[RowSource, str]


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


class BaseModel:
    """A frozen transformers model plus its tokenizer; decoder-only or encoder-decoder (T5-style)."""

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
        self.is_encoder_decoder = bool(getattr(hf_model.config, "is_encoder_decoder", False))
        self.family = "seq2seq" if self.is_encoder_decoder else "causal"
        self.hidden_size = int(hf_model.get_input_embeddings().weight.shape[1])
        self.eos_ids = _eos_ids(hf_model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)

    # ---- basics ------------------------------------------------------------------------------

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
        if files:
            return weights_fingerprint(files)
        digest = hashlib.sha256()
        for name, tensor in sorted(self.hf.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return "sha256:" + digest.hexdigest()

    def encode(self, text: str) -> list[int]:
        """Token ids of an input text, with the tokenizer's own special tokens."""
        return list(self.tokenizer(text).input_ids)

    def encode_target(self, input_text: str, target: str, eos: bool = True) -> list[int]:
        """Token ids the model should produce after `input_text`, ending with EOS unless `eos=False`."""
        if self.is_encoder_decoder:
            ids = list(self.tokenizer(target, add_special_tokens=False).input_ids)
        else:
            sep = "" if not input_text or input_text[-1].isspace() else " "
            ids = list(self.tokenizer(sep + target, add_special_tokens=False).input_ids)
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

    @cached_property
    def supports_prefix_cache(self) -> bool:
        """Whether `cache_prompts` applies: decoder-only models without sliding-window layers."""
        return supports_prefix_cache(self.hf)

    @torch.no_grad()
    def cache_prompts(self, sources: Sequence[PromptSource]) -> list[CachedPrompt]:
        """Each prompt with its per-layer keys and values, to reuse across requests (see `models.prefix`)."""
        if not self.supports_prefix_cache:
            raise ValueError(
                f"{self.name}: prefix caching needs a decoder-only model without sliding windows"
            )
        prompts = [self._prompt(s) for s in sources]
        if any(p is None for p in prompts):
            raise ValueError("cache_prompts needs a prompt for every source")
        return compute_prefixes(self.hf, [p for p in prompts if p is not None])

    def _pack(self, prompts: Sequence[RowSource] | RowPrompts, input_ids: Sequence[Sequence[int]]) -> Any:
        if not isinstance(prompts, RowPrompts):
            prompts = RowPrompts.of([self._prompt(p) for p in prompts])
        elif prompts.embeds is not None and prompts.embeds.shape[-1] != self.hidden_size:
            raise ValueError(
                f"prompt width {prompts.embeds.shape[-1]} does not match the model's hidden size "
                f"{self.hidden_size}"
            )
        return pack_rows(
            prompts,
            input_ids,
            self.hf.get_input_embeddings(),
            left_pad=not self.is_encoder_decoder,
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

        Returns (logp [B, K], mask [B, K]) with K the longest target; only the K positions that predict
        targets go through the LM head (`logits_to_keep`), which matters with a 50k vocabulary.
        """
        if any(len(t) == 0 for t in target_ids):
            raise ValueError("every row needs at least one target token")
        k = max(len(t) for t in target_ids)
        if self.is_encoder_decoder:
            packed = self._pack(prompts, input_ids)
            start = self.hf.config.decoder_start_token_id
            targets = pad_ids(target_ids, self.pad_id, left=False, device=self.device)
            decoder_in = pad_ids(
                [[start, *t[:-1]] for t in target_ids], self.pad_id, left=False, device=self.device
            )
            mask = pad_ids([[1] * len(t) for t in target_ids], 0, left=False, device=self.device)
            logits = self.hf(
                inputs_embeds=packed.inputs_embeds,
                attention_mask=packed.attention_mask,
                decoder_input_ids=decoder_in,
                decoder_attention_mask=mask,
                use_cache=False,
            ).logits
        else:
            packed = self._pack(prompts, [[*i, *t] for i, t in zip(input_ids, target_ids)])
            targets = pad_ids(target_ids, self.pad_id, left=True, device=self.device)
            mask = pad_ids([[1] * len(t) for t in target_ids], 0, left=True, device=self.device)
            logits = self.hf(
                inputs_embeds=packed.inputs_embeds,
                attention_mask=packed.attention_mask,
                position_ids=packed.position_ids,
                use_cache=False,
                logits_to_keep=k + 1,
            ).logits[:, :k]
        logp = _pick(logits, targets)  # float32 whatever the base's dtype
        return logp * mask, mask

    @torch.no_grad()
    def continuation_logprobs(
        self,
        prompts: Sequence[RowSource],
        input_ids: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
    ) -> list[list[torch.Tensor]]:
        """Per-token log-probabilities of several continuations of each row, sharing the row's prefix.

        The prompt + input of each row goes through the model ONCE (with a KV cache); each of its
        continuations (a target, or every candidate label) then costs only its own few tokens.
        This is what makes multiple-choice evaluation affordable on CPU. Equals `target_logprobs`
        of each (row, continuation) pair to float noise.
        """
        pairs = [(row, seq) for row, seqs in enumerate(continuations) for seq in seqs]
        if any(len(seq) == 0 for _, seq in pairs):
            raise ValueError("every continuation needs at least one token")
        # Rows with a cached prefix (and some input after it) skip their prompt, as in generation.
        prefixes = [
            p if isinstance(p, CachedPrompt) and ids and not self.is_encoder_decoder else None
            for p, ids in zip(prompts, input_ids)
        ]
        packed = self._pack([None if c is not None else p for c, p in zip(prefixes, prompts)], input_ids)
        row_mask, position_ids = packed.attention_mask, packed.position_ids
        index = torch.tensor([row for row, _ in pairs], dtype=torch.long, device=self.device)
        if self.is_encoder_decoder:
            encoder_out = self.hf.get_encoder()(
                inputs_embeds=packed.inputs_embeds, attention_mask=packed.attention_mask
            )
            start = self.hf.config.decoder_start_token_id
            decoder_in = pad_ids(
                [[start, *seq[:-1]] for _, seq in pairs], self.pad_id, left=False, device=self.device
            )
            hidden = encoder_out.last_hidden_state.index_select(0, index)
            logits = self.hf(
                encoder_outputs=(hidden,),
                attention_mask=packed.attention_mask.index_select(0, index),
                decoder_input_ids=decoder_in,
                decoder_attention_mask=pad_ids(
                    [[1] * len(s) for _, s in pairs], 0, left=False, device=self.device
                ),
            ).logits
            wanted = pad_ids([seq for _, seq in pairs], self.pad_id, left=False, device=self.device)
            token_logp = _pick(logits, wanted)  # [P, L]: each pair's own tokens, float32
        else:
            cache: Any = DynamicCache()
            if any(c is not None for c in prefixes):
                cache, prefix_mask, offsets = prefix_batch(self.hf, prefixes, self.pad_multiple)
                row_mask = torch.cat([prefix_mask, row_mask], dim=1)
                position_ids = position_ids + offsets[:, None]
            first = self.hf(
                inputs_embeds=packed.inputs_embeds,
                attention_mask=row_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
            firsts = index.new_tensor([[seq[0]] for _, seq in pairs])
            token_logp = _pick(first.index_select(0, index)[:, None], firsts)  # [P, 1]
            rest = [list(seq[:-1]) for _, seq in pairs]
            width = max(len(r) for r in rest)
            if width:
                cache.batch_select_indices(index)
                feed = pad_ids(
                    [r or [self.pad_id] for r in rest], self.pad_id, left=False, device=self.device
                )
                feed_mask = pad_ids([[1] * max(1, len(r)) for r in rest], 0, left=False, device=self.device)
                mask = torch.cat([row_mask.index_select(0, index), feed_mask], dim=1)
                start_pos = position_ids[:, -1:].index_select(0, index) + 1
                positions = start_pos + torch.arange(feed.shape[1], device=self.device)
                logits = self.hf(
                    input_ids=feed,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                ).logits
                wanted = pad_ids(
                    [seq[1:] or [self.pad_id] for _, seq in pairs],
                    self.pad_id,
                    left=False,
                    device=self.device,
                )
                token_logp = torch.cat([token_logp, _pick(logits, wanted)], dim=1)  # [P, 1 + width]
        out: list[list[torch.Tensor]] = [[] for _ in continuations]
        for i, (row, seq) in enumerate(pairs):
            out[row].append(token_logp[i, : len(seq)])
        return out

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> torch.Tensor:
        """Next-token logits [B, vocab] after each row's text, all rows in one forward pass."""
        prompts = [p for p, _ in rows]
        input_ids = [self.encode(text) for _, text in rows]
        packed = self._pack(prompts, input_ids)
        if self.is_encoder_decoder:
            start = torch.full((len(rows), 1), self.hf.config.decoder_start_token_id, device=self.device)
            out = self.hf(
                inputs_embeds=packed.inputs_embeds,
                attention_mask=packed.attention_mask,
                decoder_input_ids=start,
            )
        else:
            out = self.hf(
                inputs_embeds=packed.inputs_embeds,
                attention_mask=packed.attention_mask,
                position_ids=packed.position_ids,
                logits_to_keep=1,
            )
        return out.logits[:, -1].float()

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
        results: list[list[int]] = [[] for _ in rows]
        for step in self.iter_generate(rows, params):
            for i, token in step.items():
                results[i].append(token)
        return [self._finish(ids, p) for ids, p in zip(results, params)]

    def _finish(self, ids: list[int], params: SamplingParams) -> Generation:
        ended = bool(ids) and ids[-1] in self.eos_ids
        text = self.tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True)
        cut = _cut_at_stop(text, params.stop)
        if cut is not None:
            return Generation(text[:cut], ids, "stop")
        return Generation(text, ids, "stop" if ended else "length")

    @torch.no_grad()
    def iter_generate(
        self,
        rows: Sequence[Row],
        params: Sequence[SamplingParams],
        abandoned: Callable[[], Collection[int]] | None = None,
    ) -> Iterator[dict[int, int]]:
        """Yield, at every decoding step, {row index: new token id} for the rows still running.

        One KV cache for the whole batch; each row stops on its own (EOS, a stop string or its
        max_new_tokens) and then leaves the batch's tensors; the loop ends when every row has stopped.
        `abandoned`, asked after every step, names rows nobody reads any more (a server's disconnected
        clients): they stop there too, so a batch of abandoned rows ends at once instead of decoding to
        max_new_tokens, and one abandoned row no longer costs its batch mates' forward passes.
        A row with no input at all (no prompt and no text) has nothing to continue from and is refused.
        """
        if len(rows) != len(params):
            raise ValueError("one SamplingParams per row")
        if not rows:
            return
        sampler = RowSampler(list(params))
        input_ids = [self.encode(text) for _, text in rows]
        empty = [i for i, ((p, _), ids) in enumerate(zip(rows, input_ids)) if p is None and not ids]
        if empty:
            raise ValueError(f"row {empty[0]} has no input tokens (no prompt and an empty text)")
        # Rows with a cached prefix (and some text after it) skip their prompt's prefill; others go inline.
        prefixes = [
            p if isinstance(p, CachedPrompt) and ids and not self.is_encoder_decoder else None
            for (p, _), ids in zip(rows, input_ids)
        ]
        packed = self._pack([None if c is not None else p for c, (p, _) in zip(prefixes, rows)], input_ids)
        mask = packed.attention_mask
        position_ids = packed.position_ids
        batch = len(rows)
        cache: Any = DynamicCache()
        if any(c is not None for c in prefixes):
            cache, prefix_mask, offsets = prefix_batch(self.hf, prefixes, self.pad_multiple)
            mask = torch.cat([prefix_mask, mask], dim=1)
            position_ids = position_ids + offsets[:, None]
        if self.is_encoder_decoder:
            encoder_out = self.hf.get_encoder()(inputs_embeds=packed.inputs_embeds, attention_mask=mask)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            next_in = torch.full((batch, 1), self.hf.config.decoder_start_token_id, device=self.device)
            step = lambda ids: self.hf(  # noqa: E731
                encoder_outputs=encoder_out,
                attention_mask=mask,
                decoder_input_ids=ids,
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
            logits = step(next_in)
        else:
            positions = position_ids[:, -1:]
            logits = self.hf(
                inputs_embeds=packed.inputs_embeds,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        running = [p.max_new_tokens > 0 for p in params]
        texts = [""] * batch
        generated: list[list[int]] = [[] for _ in range(batch)]
        live = list(range(batch))  # the rows still in the tensors (their index in `rows`), in order
        while any(running):
            tokens: list[int] = sampler.choose(logits).tolist()  # [len(live)], one device sync a step
            emitted: dict[int, int] = {}
            for i, token in zip(live, tokens):
                generated[i].append(token)
                emitted[i] = token
                if (token in self.eos_ids and not params[i].ignore_eos) or len(generated[i]) >= params[
                    i
                ].max_new_tokens:
                    running[i] = False
                elif params[i].stop:
                    texts[i] = self.tokenizer.decode(generated[i], skip_special_tokens=True)
                    if _cut_at_stop(texts[i], params[i].stop) is not None:
                        running[i] = False
            yield emitted
            for i in abandoned() if abandoned is not None else ():
                running[i] = False
            if not any(running):
                break
            keep = [k for k, i in enumerate(live) if running[i]]
            if len(keep) < len(live):
                # Stopped rows leave the batch: later steps cost only the rows still decoding.
                index = torch.tensor(keep, device=self.device)
                live, tokens = [live[k] for k in keep], [tokens[k] for k in keep]
                sampler = sampler.select(keep)
                cache.batch_select_indices(index)
                mask = mask[index]
                if self.is_encoder_decoder:  # `step` reads these two names at each call
                    encoder_out.last_hidden_state = encoder_out.last_hidden_state[index]
                else:
                    positions = positions[index]
            feed = torch.tensor([[token] for token in tokens], device=self.device)
            if self.is_encoder_decoder:
                logits = step(feed)
            else:
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                positions = positions + 1
                logits = self.hf(
                    input_ids=feed,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1]


def _pick(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids) [B, L] from logits [B, L, V] (a gather, in float32 whatever the model's dtype)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _eos_ids(hf_model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(hf_model, "generation_config", None), hf_model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ModelNotFoundError("the base model defines no end-of-sequence token")
    return ids


def weights_fingerprint(files: Sequence[Path]) -> str:
    """SHA-256 over a model's weight files, in order: what the catalog records as its revision."""
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def auto_model_class(config: Any) -> Any:
    """AutoModelForSeq2SeqLM for encoder-decoder configs (T5), AutoModelForCausalLM otherwise."""
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def load_base_model(
    path_or_id: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    pad_multiple: int = 8,
) -> BaseModel:
    """Load any `from_pretrained` folder (or a named model such as 'smollm2-135m'), frozen.

    Decoder-only models load as `AutoModelForCausalLM`, encoder-decoder ones (T5) as
    `AutoModelForSeq2SeqLM` with the prompt on the encoder side. `dtype` is "auto" (bf16 on CUDA,
    float32 on CPU), "float32", "bfloat16", "float16" or a torch dtype; `device` is "auto" (CUDA when
    present), "cpu", "cuda[:N]" or a torch device. Adapters stay float32 whatever the base runs in
    (see `ulpt.models.precision`).
    """
    from ulpt.models.registry import resolve_model_path

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    name = str(path_or_id)
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{name}: not a loadable model folder ({exc})") from None
    auto = auto_model_class(config)
    # device_map places each tensor on `device` in `dtype` as it is read from the (memory-mapped)
    # safetensors file: no float32 host copy of the whole model first, so a GPU pod needs host
    # memory for about one shard, not for the model twice.
    hf_model = auto.from_pretrained(path, dtype=dtype, device_map={"": device}, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return BaseModel(hf_model, tokenizer, name=name, path=Path(path), pad_multiple=pad_multiple)
