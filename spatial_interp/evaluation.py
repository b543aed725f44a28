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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data.scoring import normalize
from .models.vlm import DEFAULT_SYSTEM, VLM
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
) -> EvalResult:
    """Top-1 accuracy of ``vlm`` on ``items`` (anything with ``image``, ``prompt``, ``answer``, ``direction``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Items are read a batch at a time: lazy item sets render their images only when indexed.
    ids, answers, directions, predictions, probs = [], [], [], [], []
    for start in tqdm(range(0, len(items), batch_size), desc=f"eval {task}".strip(), disable=not progress,
                      unit="batch"):
        chunk = [items[i] for i in range(start, min(start + batch_size, len(items)))]
        batch = vlm.prepare([it.image for it in chunk], [it.prompt for it in chunk], system)
        last = vlm.forward(batch)[:, -1].float()
        top = last.argmax(-1)
        predictions += [vlm.tokenizer.decode([int(t)]) for t in top]
        probs += last.softmax(-1).gather(-1, top[:, None])[:, 0].tolist()
        ids += [getattr(it, "id", str(start + j)) for j, it in enumerate(chunk)]
        answers += [it.answer for it in chunk]
        directions += [getattr(it, "direction", "") for it in chunk]
    correct = [normalize(p) == normalize(a) for p, a in zip(predictions, answers, strict=True)]
    meta = provenance(vlm, seed=seed, config={"task": task, "batch_size": batch_size})
    return EvalResult(task, vlm.info.name, ids, answers, predictions, probs, directions, correct, meta)


def answers_correctly(vlm: VLM, *, system: Any = DEFAULT_SYSTEM) -> Callable[[Any, Any], bool]:
    """The paper's pair filter: keep a pair when the model's top-1 is right on both clean and cf items."""

    def keep(clean: Any, cf: Any) -> bool:
        batch = vlm.prepare([clean.image, cf.image], [clean.prompt, cf.prompt], system)
        top = vlm.forward(batch)[:, -1].argmax(-1)
        said = [vlm.tokenizer.decode([int(t)]) for t in top]
        return all(normalize(s) == normalize(item.answer) for s, item in zip(said, (clean, cf), strict=True))

    return keep
