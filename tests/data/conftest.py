"""Shared fixtures for the data tests: a tiny offline word-level tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

WORDS = ["red", "green", "blue", "black", "brown", "gray", "orange", "white", "chair", "table", "plate", "cup",
         "mug", "book", "lemon", "bowl", "cap", "apple", "rose", "left", "right", "above", "below"]


def build_vocab() -> dict[str, int]:
    vocab = {"[UNK]": 0, "<s>": 1}
    for w in WORDS:
        for v in (w, w.capitalize(), " " + w, " " + w.capitalize()):
            vocab.setdefault(v, len(vocab))
    for extra in ("-", "oven", "mitt", " oven", "Oven", "armchair"):  # "Armchair" missing on purpose
        vocab.setdefault(extra, len(vocab))
    vocab["blue2"] = len(vocab)  # only the lowercase spelling of "blue2" exists
    return vocab


def build_raw_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(build_vocab(), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z0-9]+|[^A-Za-z0-9 ]| "), behavior="isolated")
    return tok


@pytest.fixture(scope="session")
def raw_tokenizer() -> Tokenizer:
    return build_raw_tokenizer()


@pytest.fixture(scope="session")
def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=build_raw_tokenizer(), unk_token="[UNK]", bos_token="<s>")
