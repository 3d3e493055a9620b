"""Encoder-decoder base models (T5-style): the prompt and the input go to the encoder, the output is decoded.

Encoder rows are right-padded (the mask hides padding). `prefill` runs the encoder once and the
decoder on its start token; `step` continues the decoder against the same encoder states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, EncoderDecoderCache

from ulpt.models.base import BaseModel, Decoding, RowSource, TeacherForcing
from ulpt.models.batch import RowPrompts, StagedGrid, StagedTokens
from ulpt.models.cachearg import cache_kwargs
from ulpt.models.transfer import Staging


@dataclass
class Seq2SeqDecoding(Decoding):
    encoder_states: torch.Tensor  # [B, T, d] the encoder's last hidden states; `mask` is the encoder's

    def select(self, index: torch.Tensor) -> None:
        super().select(index)
        self.encoder_states = self.encoder_states.index_select(0, index)


class Seq2SeqModel(BaseModel):
    family = "seq2seq"
    is_encoder_decoder = True
    left_pad = False

    def prefill(
        self,
        sources: Sequence[RowSource] | RowPrompts,
        input_ids: Sequence[Sequence[int]] | StagedTokens,
        *,
        decoder_ids: torch.Tensor | None = None,
        decoder_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> Seq2SeqDecoding:
        """`decoder_ids` [B, L] (teacher forcing; the start token alone by default) with `decoder_mask`."""
        packed = self._pack(sources, input_ids)
        states = self.hf.get_encoder()(
            inputs_embeds=packed.inputs_embeds, attention_mask=packed.attention_mask
        ).last_hidden_state
        if decoder_ids is None:
            decoder_ids = torch.full(
                (len(input_ids), 1), self.hf.config.decoder_start_token_id, device=self.device
            )
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache()) if use_cache else None
        logits = self.hf(
            encoder_outputs=(states,),
            attention_mask=packed.attention_mask,
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=decoder_mask,
            **cache_kwargs(self.hf, cache),
            use_cache=use_cache,
        ).logits
        return Seq2SeqDecoding(logits, cache, packed.attention_mask, states)

    def step(self, state: Decoding, feed: torch.Tensor) -> torch.Tensor:
        """Right-padded feeds are fine on a last step: the decoder's causal mask keeps padding last."""
        assert isinstance(state, Seq2SeqDecoding)
        logits = self.hf(
            encoder_outputs=(state.encoder_states,),
            attention_mask=state.mask,
            decoder_input_ids=feed,
            **cache_kwargs(self.hf, state.cache),
            use_cache=True,
        ).logits
        state.logits = logits
        return logits

    def _stage_targets(
        self,
        prompt_lengths: Sequence[int],
        input_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        staging: Staging,
    ) -> TeacherForcing:
        """The decoder reads the start token and every target but the last, right-padded."""
        start = self.hf.config.decoder_start_token_id
        return TeacherForcing(
            StagedTokens.stage(prompt_lengths, input_ids, staging),
            StagedGrid.stage(target_ids, self.pad_id, left=False, staging=staging),
            StagedGrid.stage([[1] * len(t) for t in target_ids], 0, left=False, staging=staging),
            StagedGrid.stage(
                [[start, *t[:-1]] for t in target_ids], self.pad_id, left=False, staging=staging
            ),
        )

    def _teacher_forced(self, prompts: RowPrompts, forcing: TeacherForcing) -> torch.Tensor:
        assert forcing.decoder_ids is not None
        return self.prefill(
            prompts,
            forcing.tokens,
            decoder_ids=forcing.decoder_ids.tensor(),
            decoder_mask=forcing.mask.tensor(),
            use_cache=False,
        ).logits
