"""Answer scoring: normalised top-1 correctness, the 4-variant probability metric, logit difference.

Works with any Hugging Face tokenizer (``PreTrainedTokenizer[Fast]``) and with a raw
``tokenizers.Tokenizer``. Logits are ``(batch, vocab)`` tensors at the final position.

Example:
    >>> normalize(" Red.\\n")
    'red'
    >>> answer_variants("red")
    ['red', 'Red', ' red', ' Red']
    >>> import torch
    >>> logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> variant_probs(logits, torch.tensor([[[0, 0, 1, 1]]]))   # duplicates count twice
    tensor([[1.5000]])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

_NON_ALNUM = re.compile(r"[^a-z0-9]")


class TokenizationError(ValueError):
    """An answer variant does not encode to exactly one token."""


def normalize(text: str) -> str:
    """Strip, lowercase and keep only ``[a-z0-9]`` (spec §2.6)."""
    return _NON_ALNUM.sub("", text.strip().lower())


def answer_variants(word: str) -> list[str]:
    """The four spellings scored by the probability metric: lower, Capitalized, with a leading space."""
    lower = word.strip().lower()
    cap = lower.capitalize()
    return [lower, cap, " " + lower, " " + cap]


def _encode(tokenizer: Any, text: str) -> list[int]:
    out = tokenizer.encode(text, add_special_tokens=False)
    return list(out.ids) if hasattr(out, "ids") else list(out)


def _tokenize(tokenizer: Any, text: str) -> list[str]:
    if hasattr(tokenizer, "tokenize"):
        return list(tokenizer.tokenize(text))
    return list(tokenizer.encode(text, add_special_tokens=False).tokens)


def _unk_id(tokenizer: Any) -> int | None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None and hasattr(tokenizer, "token_to_id"):
        for name in ("[UNK]", "<unk>", "<UNK>"):
            unk = tokenizer.token_to_id(name)
            if unk is not None:
                break
    return unk


def _decode(tokenizer: Any, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:  # pragma: no cover - unusual tokenizer signatures
        return tokenizer.decode(ids)


def variant_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Token ids of the 4 variants of ``word``; each must encode to exactly one known token.

    Raises :class:`TokenizationError` naming the word and the offending variant otherwise.
    """
    ids = []
    unk = _unk_id(tokenizer)
    for variant in answer_variants(word):
        enc = _encode(tokenizer, variant)
        if len(enc) != 1 or (unk is not None and enc[0] == unk):
            raise TokenizationError(
                f"answer {word!r}: variant {variant!r} encodes to {len(enc)} token(s) {enc}, expected exactly "
                "one known token (add_special_tokens=False)"
            )
        ids.append(enc[0])
    return ids


def variant_id_tensor(tokenizer: Any, words: Sequence[Sequence[str]]) -> torch.Tensor:
    """``(batch, n_strings, 4)`` LongTensor of variant ids for rows of answer strings (e.g. prob_strs)."""
    return torch.tensor([[variant_token_ids(tokenizer, w) for w in row] for row in words], dtype=torch.long)


def is_single_token(tokenizer: Any, word: str) -> bool:
    """Spec §3.1 filter: ``tokenize(word)`` and ``tokenize(word.capitalize())`` are each one known token."""
    unk = _unk_id(tokenizer)
    for text in (word, word.capitalize()):
        if len(_tokenize(tokenizer, text)) != 1:
            return False
        if unk is not None and _encode(tokenizer, text) == [unk]:
            return False
    return True


def single_token_filter(tokenizer: Any, words: Sequence[str]) -> list[str]:
    """The words that pass :func:`is_single_token`, in their original order."""
    return [w for w in words if is_single_token(tokenizer, w)]


def top1_tokens(tokenizer: Any, logits_last: torch.Tensor) -> list[str]:
    """Decoded argmax token of each row (special tokens skipped)."""
    ids = logits_last.argmax(dim=-1).tolist()
    return [_decode(tokenizer, [i]) for i in ids]


def top1_with_prob(tokenizer: Any, logits_last: torch.Tensor) -> list[tuple[str, float]]:
    """Decoded argmax token and its softmax probability, per row (Table 1 records both)."""
    probs = torch.softmax(logits_last.float(), dim=-1)
    best, ids = probs.max(dim=-1)
    return [(_decode(tokenizer, [i]), p) for i, p in zip(ids.tolist(), best.tolist(), strict=True)]


def top1_correct(tokenizer: Any, logits_last: torch.Tensor, answers: Sequence[str]) -> list[bool]:
    """``normalize(decode(argmax)) == normalize(answer)`` per row (Table 1 scoring)."""
    if logits_last.dim() != 2 or logits_last.shape[0] != len(answers):
        raise ValueError(f"logits must be (batch, vocab) with batch = {len(answers)}, got {tuple(logits_last.shape)}")
    return [normalize(tok) == normalize(ans) for tok, ans in zip(top1_tokens(tokenizer, logits_last), answers,
                                                                   strict=True)]


def variant_probs(logits_last: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed softmax probability of each string's variants (spec §10 ``logit_prob``).

    ``logits_last`` is ``(batch, vocab)``; ``ids`` is ``(batch, n_strings, n_variants)`` (or
    ``(n_strings, n_variants)``, shared by every row). Returns ``(batch, n_strings)``; an id listed twice
    is counted twice.
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=logits_last.device)
    probs = torch.softmax(logits_last.float(), dim=-1)
    if ids.dim() == 2:
        ids = ids.unsqueeze(0).expand(probs.shape[0], -1, -1)
    b, n, v = ids.shape
    gathered = probs.gather(1, ids.reshape(b, n * v)).reshape(b, n, v)
    return gathered.sum(dim=-1)


def logit_diff(logits_last: torch.Tensor, clean_ids: torch.Tensor | Sequence[int],
               corrupt_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``logit[clean] - logit[corrupt]`` per row (spec §10; one id per row)."""
    clean = torch.as_tensor(clean_ids, dtype=torch.long, device=logits_last.device).reshape(-1, 1)
    corrupt = torch.as_tensor(corrupt_ids, dtype=torch.long, device=logits_last.device).reshape(-1, 1)
    return (logits_last.gather(1, clean) - logits_last.gather(1, corrupt)).squeeze(1)
