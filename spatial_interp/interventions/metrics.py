"""Metric callbacks: final-position logits of a batch → a few numbers per item.

A metric is any callable ``metric(logits, owners) -> Tensor`` of shape ``(n, m)`` (or ``(n,)``),
where ``owners`` are the :class:`~.examples.PatchPair` (patch, sweep) or
:class:`~.examples.Example` (steer, ablate) of each row. An optional ``names(owners)`` method labels
the ``m`` outputs; otherwise they are ``m0, m1, …``. Metrics run locally on the returned logits, so
they never have to be remote-safe.

Example:
    >>> import torch, spatial_interp as si
    >>> from spatial_interp.interventions.metrics import answer_probs
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> metric = answer_probs(vlm.tokenizer)
    >>> ids = metric.token_ids(["red", "blue"])
    >>> tuple(ids.shape)
    (2, 4)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

Metric = Callable[[Tensor, Sequence[Any]], Tensor]


class MetricError(ValueError):
    """A metric that cannot be computed for these items (missing answers, multi-token words)."""


def normalise(text: str) -> str:
    """The paper's answer normalisation: lowercase, keep only ``[a-z0-9]``."""
    return re.sub(r"[^a-z0-9]", "", text.strip().lower())


def _answers(owner: Any) -> tuple[str, ...]:
    answers = getattr(owner, "answers", None)
    if answers:
        return tuple(answers)
    answer = getattr(owner, "answer", None)
    if answer is not None:
        return (answer,)
    raise MetricError(f"{type(owner).__name__} {getattr(owner, 'name', '')!r} has no answer strings; give "
                      "PatchPair(answers=...) or Example(answer=...), or pass a different metric")


def variant_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Token ids of ``word``, ``Word``, `` word`` and `` Word`` (§5 metric), each a single token.

    Uses ``spatial_interp.data.scoring.variant_token_ids`` when that module is available, so the
    scoring code has one definition.
    """
    try:
        from ..data.scoring import variant_token_ids as data_variants
    except ImportError:
        data_variants = None
    if data_variants is not None:
        return [int(i) for i in data_variants(tokenizer, word)]
    lower = word.lower()
    ids = []
    for variant in (lower, lower.capitalize(), " " + lower, " " + lower.capitalize()):
        tokens = tokenizer.encode(variant, add_special_tokens=False)
        if len(tokens) != 1:
            raise MetricError(f"{variant!r} is {len(tokens)} tokens for this tokenizer; the answer-probability "
                              "metric needs every spelling variant to be a single token")
        ids.append(int(tokens[0]))
    return ids


class answer_probs:  # noqa: N801 - used like a function: metric=answer_probs(tok)
    """Summed softmax probability of each answer string's 4 spelling variants (the paper's metric).

    Output ``(n, n_answers)`` named ``c0, c1, …`` (§5/§6 labels: clean answer first).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def token_ids(self, words: Sequence[str]) -> Tensor:
        for word in words:
            if word not in self._cache:
                self._cache[word] = variant_token_ids(self.tokenizer, word)
        return torch.tensor([self._cache[w] for w in words], dtype=torch.long)

    def names(self, owners: Sequence[Any]) -> list[str]:
        return [f"c{i}" for i in range(len(_answers(owners[0])))]

    def __call__(self, logits: Float[Tensor, "n vocab"], owners: Sequence[Any]) -> Float[Tensor, "n k"]:
        words = [_answers(o) for o in owners]
        if len({len(w) for w in words}) != 1:
            raise MetricError("every item must have the same number of answer strings for answer_probs")
        ids = torch.stack([self.token_ids(w) for w in words]).to(logits.device)  # (n, k, 4)
        probs = logits.float().softmax(-1)
        # Duplicate variant ids are summed twice, as in the authors' metric.
        return probs.gather(1, ids.flatten(1)).view(ids.shape).sum(-1)


class top1:  # noqa: N801
    """1.0 where the argmax token, decoded and normalised, equals answer ``which`` (Table 1 scoring)."""

    def __init__(self, tokenizer: Any, which: int = 0) -> None:
        self.tokenizer, self.which = tokenizer, which

    def names(self, owners: Sequence[Any]) -> list[str]:
        return ["top1"]

    def __call__(self, logits: Float[Tensor, "n vocab"], owners: Sequence[Any]) -> Float[Tensor, "n 1"]:
        predicted = logits.argmax(-1).tolist()
        out = [
            float(normalise(self.tokenizer.decode([p])) == normalise(_answers(o)[self.which]))
            for p, o in zip(predicted, owners, strict=True)
        ]
        return torch.tensor(out)[:, None]


class top_token:  # noqa: N801
    """The argmax token id (as a float, exact below 2**24): compare runs token for token, e.g. whether a
    patch changed the prediction at all, where :class:`top1` only compares normalised answers."""

    def names(self, owners: Sequence[Any]) -> list[str]:
        return ["top_token"]

    def __call__(self, logits: Float[Tensor, "n vocab"], owners: Sequence[Any]) -> Float[Tensor, "n 1"]:
        return logits.argmax(-1).float()[:, None]


class logit_diff:  # noqa: N801
    """``logit[answer a] − logit[answer b]`` with each answer's first (lowercase) variant id."""

    def __init__(self, tokenizer: Any, a: int = 0, b: int = -1) -> None:
        self.probs = answer_probs(tokenizer)
        self.a, self.b = a, b

    def names(self, owners: Sequence[Any]) -> list[str]:
        return ["logit_diff"]

    def __call__(self, logits: Float[Tensor, "n vocab"], owners: Sequence[Any]) -> Float[Tensor, "n 1"]:
        words = [_answers(o) for o in owners]
        first = self.probs.token_ids([w[self.a] for w in words])[:, 0].to(logits.device)
        second = self.probs.token_ids([w[self.b] for w in words])[:, 0].to(logits.device)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return (logits[rows, first] - logits[rows, second]).float()[:, None]


class combine:  # noqa: N801
    """Several metrics side by side: ``combine({"p": answer_probs(t), "top1": top1(t)})``."""

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        self.metrics = dict(metrics)

    def names(self, owners: Sequence[Any]) -> list[str]:
        out = []
        for key, metric in self.metrics.items():
            out += [f"{key}.{n}" for n in metric_names(metric, owners, _width(metric, owners))]
        return out

    def __call__(self, logits: Tensor, owners: Sequence[Any]) -> Tensor:
        return torch.cat([_as_2d(m(logits, owners)) for m in self.metrics.values()], dim=1)


def _width(metric: Metric, owners: Sequence[Any]) -> int | None:
    names = getattr(metric, "names", None)
    return len(names(owners)) if callable(names) else None


def _as_2d(values: Tensor) -> Tensor:
    values = torch.as_tensor(values)
    return values[:, None] if values.dim() == 1 else values


def metric_names(metric: Metric, owners: Sequence[Any], width: int | None) -> list[str]:
    """Labels of a metric's outputs (its ``names`` method, else ``m0, m1, …``)."""
    names = getattr(metric, "names", None)
    if callable(names):
        return list(names(owners))
    return [f"m{i}" for i in range(width or 1)]


def evaluate(metric: Metric | Mapping[str, Metric], logits: Tensor, owners: Sequence[Any]) -> tuple[Tensor, list[str]]:
    """Apply a metric (or a dict of metrics) → ``(values (n, m) on the CPU as float32, names)``."""
    if isinstance(metric, Mapping):
        metric = combine(metric)
    values = _as_2d(metric(logits, owners)).detach().float().cpu()
    if values.shape[0] != len(owners):
        raise MetricError(f"metric returned {values.shape[0]} rows for {len(owners)} items")
    return values, metric_names(metric, owners, values.shape[1])


def default_metric(vlm: Any, owners: Sequence[Any]) -> Metric:
    """Answer probabilities when the items carry answer strings, else the raw top logit."""
    try:
        _answers(owners[0])
    except MetricError:
        return max_logit()
    return answer_probs(vlm.tokenizer)


class max_logit:  # noqa: N801
    """The largest final-position logit (a fallback when items carry no answers)."""

    def names(self, owners: Sequence[Any]) -> list[str]:
        return ["max_logit"]

    def __call__(self, logits: Tensor, owners: Sequence[Any]) -> Tensor:
        return logits.float().max(-1).values[:, None]


class raw_logits:  # noqa: N801
    """The whole final-position logit vector (for tests and custom analyses)."""

    def __call__(self, logits: Tensor, owners: Sequence[Any]) -> Tensor:
        return logits
