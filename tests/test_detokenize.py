"""Incremental detokenization: the text streamed token by token equals one decode of all the tokens,
stop strings are found wherever they fall across tokens, and each step decodes a bounded window."""

from __future__ import annotations

import random
from typing import Any

import pytest

import ulpt
from ulpt.models.detokenize import IncrementalDetokenizer
from ulpt.models.output import Generation, OutputText
from ulpt.models.tiny import build_tokenizer

MULTI_BYTE = "héllo wörld, 日本語のテキスト 🙂👍 naïve café — ok"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=True))


@pytest.mark.parametrize("seed", range(6))
def test_streamed_text_equals_a_full_decode_after_every_token(tokenizer: Any, seed: int) -> None:
    """Random ids (byte-level tokens split multi-byte characters anywhere) and encoded multi-byte text."""
    rng = random.Random(seed)
    random_ids = [rng.randrange(len(tokenizer)) for _ in range(300)]
    text_ids = list(tokenizer(MULTI_BYTE * 3, add_special_tokens=False).input_ids)
    waited = 0
    for ids in (random_ids, text_ids):
        detok = IncrementalDetokenizer(tokenizer)
        for k, token in enumerate(ids, 1):
            detok.extend([token])
            assert detok.full_text == _decode(tokenizer, ids[:k])
            assert detok.pending == "" or detok.pending.endswith(
                "\ufffd"
            )  # only an unfinished character waits
            waited += detok.pending != ""
    assert waited, "some tokens should end inside a multi-byte character"
    assert detok.full_text == MULTI_BYTE * 3


def test_each_step_decodes_a_bounded_window_not_the_whole_output(tokenizer: Any) -> None:
    rng = random.Random(0)
    ids = [rng.randrange(3, len(tokenizer)) for _ in range(3000)]
    detok = IncrementalDetokenizer(tokenizer, stop=("never appears",))
    per_step = []
    for token in ids:
        before = detok.decoded_tokens
        detok.extend([token])
        per_step.append(detok.decoded_tokens - before)
    # A whole re-decode would hand the tokenizer 1,500 tokens a step on average here.
    assert max(per_step) <= 16
    assert sum(per_step) <= 6 * len(ids)
    assert detok.full_text == _decode(tokenizer, ids)


@pytest.mark.parametrize(
    ("stops", "text"),
    [
        (("ie wa",), "the movie was good and the room was clean"),  # straddles a token boundary
        (("語のテ",), MULTI_BYTE),  # inside multi-byte characters split across byte-level tokens
        (("clean", "room", "zzz"), "the movie was good and the room was clean"),  # the earliest one wins
        (("🙂",), MULTI_BYTE),
        (("not here",), MULTI_BYTE),
    ],
)
def test_a_stop_string_is_found_wherever_it_falls_and_the_text_is_cut_before_it(
    tokenizer: Any, stops: tuple[str, ...], text: str
) -> None:
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    params = ulpt.SamplingParams(max_new_tokens=len(ids), stop=stops)
    output = OutputText(tokenizer, params, eos_ids={1})
    hits = [text.find(s) for s in stops if s in text]
    first = min(hits) if hits else None
    for k, token in enumerate(ids, 1):
        output.add(token)
        seen = _decode(tokenizer, ids[:k])
        expected_stop = [seen.find(s) for s in stops if s in seen]
        assert output.stopped == bool(expected_stop)
        if output.stopped:
            assert output.text == seen[: min(expected_stop)]
            break
    generation = output.generation()
    assert generation.text == (text if first is None else text[:first])
    assert generation.finish_reason == ("length" if first is None else "stop")


def test_an_ending_eos_is_a_token_but_not_text(tokenizer: Any) -> None:
    ids = list(tokenizer("the movie", add_special_tokens=False).input_ids)
    output = OutputText(tokenizer, ulpt.SamplingParams(max_new_tokens=10), eos_ids={1})
    for token in [*ids, 1]:
        output.add(token)
    assert output.generation() == Generation("the movie", [*ids, 1], "stop")
