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
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
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
    """Token ids of ``word``, ``Word``, `` word`` and `` Word`` (§5 metric), each a single token
    (one definition: :func:`spatial_interp.data.scoring.variant_token_ids`)."""
    from ..data.scoring import variant_token_ids as data_variants

    return [int(i) for i in data_variants(tokenizer, word)]


def distinct_variant_mask(ids: Int[Tensor, "... 4"]) -> Bool[Tensor, "... 4"]:
    """True at the first occurrence of each id along the last axis.

    A word-level tokenizer maps several spellings to one id (``red`` and `` red`` are the same token);
    counting it once per spelling would sum the same probability twice and let the "probability" of
    one answer exceed 1.
    """
    earlier = (ids[..., :, None] == ids[..., None, :]).tril(-1).any(-1)
    return ~earlier


def answer_roles(owners: Sequence[Any], width: int) -> list[str]:
    """Names of the ``width`` answer strings: the pairs' ``answer_names`` (``clean answer``, ``cf answer``, …)
    when they carry them, else ``answer 0``, ``answer 1``, … in the order of ``answers``."""
    names = tuple(getattr(owners[0], "answer_names", ()) or ())
    if len(names) == width and all(tuple(getattr(o, "answer_names", ()) or ()) == names for o in owners):
        return list(names)
    return [f"answer {i}" for i in range(width)]


class answer_probs:  # noqa: N801 - used like a function: metric=answer_probs(tok)
    """Probability of each answer string: the softmax mass of its spelling variants (``word``, ``Word``,
    `` word``, `` Word``), each distinct token id counted once, so each value lies in [0, 1].

    Output ``(n, n_answers)``, named by the pairs' answer roles (``clean answer``, ``middle``,
    ``cf answer``, … for :mod:`spatial_interp.data.pairs`), else ``answer 0``, ``answer 1``, ….
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
        return answer_roles(owners, len(_answers(owners[0])))

    def __call__(self, logits: Float[Tensor, "n vocab"], owners: Sequence[Any]) -> Float[Tensor, "n k"]:
        words = [_answers(o) for o in owners]
        if len({len(w) for w in words}) != 1:
            raise MetricError("every item must have the same number of answer strings for answer_probs")
        ids = torch.stack([self.token_ids(w) for w in words]).to(logits.device)  # (n, k, 4)
        probs = logits.float().softmax(-1)
        mass = probs.gather(1, ids.flatten(1)).view(ids.shape)
        return (mass * distinct_variant_mask(ids)).sum(-1)


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


# --- differentiable scalar metrics (attribution patching) -------------------------------------------
Transform = Literal["logit", "prob", "logprob", "log_odds"]
"""What a :class:`TokenReadout` weighs: ``"logit"``, ``"prob"`` (softmax), ``"logprob"`` (log-softmax), or
``"log_odds"``: ``log Σ_{c>0} c·p − log Σ_{c<0} |c|·p`` (the log-ratio of two probability masses)."""
TRANSFORMS = ("logit", "prob", "logprob", "log_odds")


def readout(logits: Float[Tensor, "n vocab"], transform: Transform, ids: Tensor,
            coeffs: Tensor) -> Float[Tensor, " n"]:
    """``Σ_k coeffs[i, k] · f(logits)[i, ids[i, k]]`` per row, with ``f`` the identity, softmax or log-softmax;
    for ``"log_odds"`` the log of the positively weighted probability mass minus the log of the negative one.

    The one definition of a :class:`TokenReadout`'s value: attribution evaluates the same formula inside
    its trace (where it is differentiated), and ``patch``/``sweep`` call it through the metric, so
    estimated and exact effects are of one number.
    """
    if transform not in TRANSFORMS:
        raise MetricError(f"unknown readout transform {transform!r}; use one of {TRANSFORMS}")
    x = logits.float()
    coeffs = coeffs.to(device=x.device, dtype=x.dtype)
    if transform == "log_odds":
        # log(0) = -inf drops the other side's ids; logsumexp keeps the log-mass exact in the tails.
        chosen = x.log_softmax(-1).gather(1, ids.to(x.device))
        return ((chosen + coeffs.clamp(min=0).log()).logsumexp(-1)
                - (chosen + (-coeffs).clamp(min=0).log()).logsumexp(-1))
    if transform == "prob":
        x = x.softmax(-1)
    elif transform == "logprob":
        x = x.log_softmax(-1)
    return (x.gather(1, ids.to(x.device)) * coeffs).sum(-1)


class TokenReadout:
    """A differentiable scalar metric: a weighted sum of final-position logits, probabilities or log-probs.

    Subclasses give :meth:`weights` (token ids and coefficients per item) and a name; the value is
    :func:`readout`. Any ``TokenReadout`` is also an ordinary metric (``(n, 1)`` output, one name), so the
    same object drives ``si.attribute`` (which differentiates it) and ``si.patch``/``si.sweep``.
    """

    transform: Transform = "prob"

    def weights(self, owners: Sequence[Any]) -> tuple[Tensor, Tensor]:
        """``(ids, coeffs)``: LongTensor and float tensor of shape ``(n, k)``, one row per owner."""
        raise NotImplementedError

    def name(self, owners: Sequence[Any]) -> str:
        raise NotImplementedError

    def names(self, owners: Sequence[Any]) -> list[str]:
        return [self.name(owners)]

    def __call__(self, logits: Float[Tensor, "n vocab"], owners: Sequence[Any]) -> Float[Tensor, "n 1"]:
        ids, coeffs = self.weights(owners)
        return readout(logits, self.transform, ids, coeffs)[:, None]


def _answer_index(which: int, owners: Sequence[Any]) -> int:
    """``which`` as a non-negative index into every owner's answers (a clear error when out of range)."""
    counts = {len(_answers(o)) for o in owners}
    if len(counts) != 1:
        raise MetricError("every item must have the same number of answer strings")
    n = counts.pop()
    if not -n <= which < n:
        raise MetricError(f"answer index {which} is out of range for items with {n} answer strings")
    return which % n


class _AnswerReadout(TokenReadout):
    def __init__(self, tokenizer: Any) -> None:
        self.probs = answer_probs(tokenizer)

    def _role(self, owners: Sequence[Any], which: int) -> str:
        return answer_roles(owners, len(_answers(owners[0])))[_answer_index(which, owners)]

    def _variant_ids(self, owners: Sequence[Any], which: int) -> Tensor:
        """(n, 4) token ids of the 4 spelling variants of each owner's answer ``which``."""
        k = _answer_index(which, owners)
        return self.probs.token_ids([_answers(o)[k] for o in owners])

    def _distinct(self, a: int, b: int, owners: Sequence[Any]) -> tuple[int, int]:
        first, second = _answer_index(a, owners), _answer_index(b, owners)
        if first == second:
            raise MetricError(f"{type(self).__name__} needs two different answers, got answer {first} twice")
        return first, second


class answer_prob(_AnswerReadout):  # noqa: N801 - used like a function
    """``P(answer which)``: the probability mass of answer ``which``'s spelling variants, each distinct
    token id once (as :class:`answer_probs`); default the last answer (the cf answer of §6 pairs).

    >>> import spatial_interp as si
    >>> from spatial_interp.interventions import Example, PatchPair
    >>> from PIL import Image
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pair = PatchPair(Example(Image.new("RGB", (8, 8)), "x"), Example(Image.new("RGB", (8, 8)), "x"),
    ...                  answers=("red", "blue"), answer_names=("clean answer", "cf answer"))
    >>> answer_prob(vlm.tokenizer).names([pair])
    ['P(cf answer)']
    """

    def __init__(self, tokenizer: Any, which: int = -1) -> None:
        super().__init__(tokenizer)
        self.which = which

    def name(self, owners: Sequence[Any]) -> str:
        return f"P({self._role(owners, self.which)})"

    def weights(self, owners: Sequence[Any]) -> tuple[Tensor, Tensor]:
        ids = self._variant_ids(owners, self.which)
        return ids, distinct_variant_mask(ids).float()


class prob_diff(_AnswerReadout):  # noqa: N801
    """``P(answer plus) − P(answer minus)`` (each as :class:`answer_prob`); default the last answer minus
    the first, i.e. ``P(cf answer) − P(clean answer)`` for §6 pairs.

    >>> import spatial_interp as si
    >>> from spatial_interp.interventions import Example, PatchPair
    >>> from PIL import Image
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pair = PatchPair(Example(Image.new("RGB", (8, 8)), "x"), Example(Image.new("RGB", (8, 8)), "x"),
    ...                  answers=("red", "blue"), answer_names=("clean answer", "cf answer"))
    >>> prob_diff(vlm.tokenizer).names([pair])
    ['P(cf answer)-P(clean answer)']
    """

    def __init__(self, tokenizer: Any, plus: int = -1, minus: int = 0) -> None:
        super().__init__(tokenizer)
        self.plus, self.minus = plus, minus

    def name(self, owners: Sequence[Any]) -> str:
        self._distinct(self.plus, self.minus, owners)
        return f"P({self._role(owners, self.plus)})-P({self._role(owners, self.minus)})"

    def weights(self, owners: Sequence[Any]) -> tuple[Tensor, Tensor]:
        self._distinct(self.plus, self.minus, owners)
        plus, minus = self._variant_ids(owners, self.plus), self._variant_ids(owners, self.minus)
        coeffs = torch.cat([distinct_variant_mask(plus).float(), -distinct_variant_mask(minus).float()], dim=1)
        return torch.cat([plus, minus], dim=1), coeffs


class answer_logit_diff(_AnswerReadout):  # noqa: N801
    """``logit(answer plus) − logit(answer minus)`` with each answer's first (lowercase) variant, as
    :class:`logit_diff`; default the last answer minus the first. Linear in the logits, so attribution
    through the unembedding is exact.

    >>> import spatial_interp as si
    >>> from spatial_interp.interventions import Example, PatchPair
    >>> from PIL import Image
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pair = PatchPair(Example(Image.new("RGB", (8, 8)), "x"), Example(Image.new("RGB", (8, 8)), "x"),
    ...                  answers=("red", "blue"))
    >>> answer_logit_diff(vlm.tokenizer).names([pair])
    ['logit(answer 1)-logit(answer 0)']
    """

    transform = "logit"

    def __init__(self, tokenizer: Any, plus: int = -1, minus: int = 0) -> None:
        super().__init__(tokenizer)
        self.plus, self.minus = plus, minus

    def name(self, owners: Sequence[Any]) -> str:
        self._distinct(self.plus, self.minus, owners)
        return f"logit({self._role(owners, self.plus)})-logit({self._role(owners, self.minus)})"

    def weights(self, owners: Sequence[Any]) -> tuple[Tensor, Tensor]:
        self._distinct(self.plus, self.minus, owners)
        ids = torch.cat([self._variant_ids(owners, self.plus)[:, :1], self._variant_ids(owners, self.minus)[:, :1]],
                        dim=1)
        return ids, torch.tensor([[1.0, -1.0]]).expand(ids.shape[0], 2).clone()


class answer_log_odds(prob_diff):  # noqa: N801
    """``log P(answer plus) − log P(answer minus)`` (each probability as :class:`answer_prob`); default the
    last answer against the first. Unlike :class:`prob_diff` it does not flatten out where one answer
    already has all the probability, so a linear estimate of it saturates less.

    >>> import spatial_interp as si
    >>> from spatial_interp.interventions import Example, PatchPair
    >>> from PIL import Image
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pair = PatchPair(Example(Image.new("RGB", (8, 8)), "x"), Example(Image.new("RGB", (8, 8)), "x"),
    ...                  answers=("red", "blue"), answer_names=("clean answer", "cf answer"))
    >>> answer_log_odds(vlm.tokenizer).names([pair])
    ['logP(cf answer)-logP(clean answer)']
    """

    transform = "log_odds"

    def name(self, owners: Sequence[Any]) -> str:
        self._distinct(self.plus, self.minus, owners)
        return f"logP({self._role(owners, self.plus)})-logP({self._role(owners, self.minus)})"
