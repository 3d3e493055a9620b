"""Tiny random base models built from configs, for tests and benchmarks (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

FAMILIES = ("llama", "t5")
_WORDS = (
    "the a an this that movie film book food service room staff price day night good great bad awful "
    "fine love hate like really very not quite slow fast clean dirty happy sad positive negative neutral "
    "yes no true false one two three four five six seven eight nine ten plus minus equals answer question "
    "review sentence user says was is are were it i we they you he she"
).split()


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small generated corpus: <pad>=0, </s>=1, <unk>=2."""
    gen = torch.Generator().manual_seed(0)
    corpus = []
    for _ in range(2000):
        idx = torch.randint(len(_WORDS), (12,), generator=gen).tolist()
        corpus.append(" ".join(_WORDS[i] for i in idx) + ". Q: A: 0123456789 +-=?!")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_model(
    folder: str | os.PathLike[str],
    family: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a random `family` model and its tokenizer to `folder`, loadable by `from_pretrained`."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    folder = Path(folder)
    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    model: torch.nn.Module
    config: Any
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=max(1, num_heads // 2),
            max_position_embeddings=512,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=1,
            tie_word_embeddings=True,
            initializer_range=0.2,
        )
        model = LlamaForCausalLM(config)
    else:
        config = T5Config(
            vocab_size=vocab,
            d_model=hidden_size,
            d_kv=hidden_size // num_heads,
            d_ff=hidden_size * 2,
            num_layers=num_layers,
            num_decoder_layers=num_layers,
            num_heads=num_heads,
            pad_token_id=0,
            eos_token_id=1,
            initializer_factor=1.0,
        )
        config.decoder_start_token_id = 0
        model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
