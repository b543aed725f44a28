"""Behavioural evaluation (the paper's Table 1): one forward per item, top-1 of the final position.

An item is correct when the argmax token, decoded and normalised (lower-case alphanumerics only),
equals the normalised answer — so case and a leading space do not matter (spec §2.6).

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.data.tasks import squares_items
    >>> from spatial_interp.evaluation import evaluate
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> result = evaluate(vlm, squares_items(vlm.canvas)[:8], batch_size=4, progress=False)
    >>> result.n
    8
    >>> from spatial_interp.data.pairs import criss_cross_pairs
    >>> from spatial_interp.data.tasks import task_for
    >>> keep = answers_correctly(vlm, batch_size=8)
    >>> pairs = criss_cross_pairs(task_for("squares", vlm.canvas), vlm.canvas, n_per_direction=2, max_attempts=8,
    ...                           keep=keep)
    >>> all(keep(p.clean, p.cf) for p in pairs)
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data.scoring import normalize
from .models.vlm import DEFAULT_SYSTEM, VLM
from .prefetch import prefetched
from .progress import progress_bar
from .results import provenance, write_json

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Per-item predictions and the accuracy summaries of one task on one model."""

    task: str
    model: str
    item_ids: list[str]
    answers: list[str]
    predictions: list[str]
    prediction_probs: list[float]
    directions: list[str]
    correct: list[bool]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / self.n if self.n else float("nan")

    def per_direction(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for direction in dict.fromkeys(self.directions):
            hits = [c for c, d in zip(self.correct, self.directions, strict=True) if d == direction]
            out[direction] = {"correct": sum(hits), "n": len(hits), "accuracy": sum(hits) / len(hits)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "model": self.model, "n": self.n, "correct": sum(self.correct),
            "accuracy": self.accuracy, "per_direction": self.per_direction(), "meta": self.meta,
            "items": [
                {"id": i, "answer": a, "prediction": p, "prob": q, "direction": d, "correct": c}
                for i, a, p, q, d, c in zip(self.item_ids, self.answers, self.predictions, self.prediction_probs,
                                            self.directions, self.correct, strict=True)
            ],
        }

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically)."""
        return write_json(path, self.to_dict())


@torch.no_grad()
def evaluate(
    vlm: VLM,
    items: Sequence[Any],
    *,
    task: str = "",
    batch_size: int = 16,
    system: Any = DEFAULT_SYSTEM,
    progress: bool = True,
    seed: int | None = None,
    prefetch: bool = True,
) -> EvalResult:
    """Top-1 accuracy of ``vlm`` on ``items`` (anything with ``image``, ``prompt``, ``answer``, ``direction``).

    One forward per ``batch_size`` items. Items are read a batch at a time and dropped after it, so a
    lazy item set (``data.items.ItemSet``) renders only the batch in hand (and, with ``prefetch``, the
    next one, prepared in a worker thread during this one's forward): memory does not grow with the
    number of items.
    """
    from .interventions.engine import note_forward

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids, answers, directions, predictions, probs = [], [], [], [], []

    def prepared() -> Iterator[tuple[int, list[Any], Any]]:
        for start in range(0, len(items), batch_size):
            chunk = [items[i] for i in range(start, min(start + batch_size, len(items)))]
            yield start, chunk, vlm.prepare([it.image for it in chunk], [it.prompt for it in chunk], system)

    bar = progress_bar(total=math.ceil(len(items) / batch_size), desc=f"eval {task}".strip(),
                       disable=not progress, unit="batch")
    # The next chunk is rendered and processed in a worker while this one runs (spatial_interp.prefetch).
    for start, chunk, batch in prefetched(prepared(), enabled=prefetch):
        bar.update()
        note_forward(batch)
        last = vlm.forward(batch)[:, -1].float()
        top = last.argmax(-1)
        predictions += [vlm.tokenizer.decode([int(t)]) for t in top]
        probs += last.softmax(-1).gather(-1, top[:, None])[:, 0].tolist()
        ids += [getattr(it, "id", str(start + j)) for j, it in enumerate(chunk)]
        answers += [it.answer for it in chunk]
        directions += [getattr(it, "direction", "") for it in chunk]
        del chunk, batch
    bar.close()
    correct = [normalize(p) == normalize(a) for p, a in zip(predictions, answers, strict=True)]
    meta = provenance(vlm, seed=seed, config={"task": task, "batch_size": batch_size})
    return EvalResult(task, vlm.info.name, ids, answers, predictions, probs, directions, correct, meta)


class PairFilter:
    """The paper's pair filter: keep a pair when the model's top-1 is right on both its clean and cf items.

    Call it as ``keep(clean, cf) -> bool``, or hand it to ``data.pairs.build_pairs(keep=...)``, which
    uses :meth:`many` to judge candidates ``batch_size`` rows (items) per forward, in draw order, and
    selects exactly the pairs the one-pair-at-a-time filter would.

    Args:
        ablation: judge the answers under this ablation (§7.2: pairs answered correctly *under* it).
        cache: the ``ReferenceCache`` of the ablation's references (shared with other ablation calls).
        batch_size: items (two per pair) per forward.
    """

    def __init__(self, vlm: VLM, *, system: Any = DEFAULT_SYSTEM, ablation: Any = None, cache: Any = None,
                 batch_size: int = 16) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.vlm, self.system, self.ablation, self.cache, self.batch_size = vlm, system, ablation, cache, batch_size

    @property
    def pairs_per_call(self) -> int:
        """Pairs judged per forward (what ``build_pairs`` draws ahead at most)."""
        return max(1, self.batch_size // 2)

    def __call__(self, clean: Any, cf: Any) -> bool:
        return self.many([(clean, cf)])[0]

    def many(self, pairs: Sequence[tuple[Any, Any]]) -> list[bool]:
        """For each ``(clean, cf)``, whether both are answered correctly (``batch_size`` items per forward)."""
        from .interventions.ablate import ablated_logits
        from .interventions.engine import note_forward
        from .interventions.examples import as_example

        rows = [item for pair in pairs for item in pair]
        said: list[bool] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            if self.ablation is None:
                batch = self.vlm.prepare([it.image for it in chunk], [it.prompt for it in chunk], self.system)
                note_forward(batch)
                logits = self.vlm.forward(batch)[:, -1]
            else:
                logits = ablated_logits(self.vlm, [as_example(it) for it in chunk], self.ablation, system=self.system,
                                        batch_size=self.batch_size, cache=self.cache)
            top = logits.argmax(-1).tolist()
            said += [normalize(self.vlm.tokenizer.decode([t])) == normalize(it.answer)
                     for t, it in zip(top, chunk, strict=True)]
        return [said[2 * i] and said[2 * i + 1] for i in range(len(pairs))]


def answers_correctly(vlm: VLM, *, system: Any = DEFAULT_SYSTEM, ablation: Any = None, cache: Any = None,
                      batch_size: int = 16) -> PairFilter:
    """The paper's pair filter (a :class:`PairFilter`): top-1 right on both the clean and the cf item,
    optionally under ``ablation`` (§7.2). ``build_pairs`` judges its candidates in batches."""
    return PairFilter(vlm, system=system, ablation=ablation, cache=cache, batch_size=batch_size)
