"""Helpers for the training and CLI tests: a character-level tokenizer and a tiny model folder on disk."""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.conftest import make_tiny_model

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3 match the tiny models' pad/bos/eos ids
CHARS = string.ascii_letters + string.digits + " \n.,:;-?!'()"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (vocabulary of 79 < the tiny models' 128)."""
    vocab = {token: i for i, token in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_model(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """A tiny random causal LM and the character tokenizer, saved as a Hugging Face model folder."""
    model = make_tiny_model(family, seed=seed, max_position_embeddings=512)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder
