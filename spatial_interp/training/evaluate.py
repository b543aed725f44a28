"""Behavioural evaluation of an organism: the paper's Table 1 items, held-out layouts, held-out orderings.

Scoring follows the paper (spec §2.6): one forward pass, argmax of the final-position logits,
decode the token, compare after lower-casing and stripping non-alphanumerics.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.training.evaluate import evaluate_scenes
    >>> from spatial_interp.training.stimuli import CANVASES, table1_scenes
    >>> vlm = si.load("organism-qwen2-vl")
    >>> result = evaluate_scenes(vlm, table1_scenes("squares", CANVASES["qwen2_vl"])[2::4][:8])  # "above" items
    >>> len(result.predictions), 0.0 <= result.accuracy <= 1.0
    (8, True)
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.vlm import VLM
from .encode import BatchEncoder
from .stimuli import CANVASES, Canvas, Renderer, Scene, random_scene, table1_scenes
from .vocab import TASKS, is_heldout


def norm(text: str) -> str:
    """The paper's answer normalisation: strip, lower-case, keep only ``[a-z0-9]``."""
    return re.sub(r"[^a-z0-9]", "", text.strip().lower())


@dataclass
class EvalResult:
    """Per-item predictions of one scene list."""

    scenes: list[Scene]
    predictions: list[str]
    correct: np.ndarray = field(repr=False)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    def by(self, key: str) -> dict[str, float]:
        """Accuracy grouped by a scene attribute (``"task"``, ``"direction"``)."""
        groups: dict[str, list[bool]] = defaultdict(list)
        for scene, ok in zip(self.scenes, self.correct, strict=True):
            groups[str(getattr(scene, key))].append(bool(ok))
        return {k: float(np.mean(v)) for k, v in groups.items()}

    def subset(self, mask: Sequence[bool]) -> EvalResult:
        keep = [i for i, m in enumerate(mask) if m]
        return EvalResult([self.scenes[i] for i in keep], [self.predictions[i] for i in keep], self.correct[keep])


class SceneRunner:
    """Renders and encodes scenes for a loaded :class:`VLM` (fast path, identical to ``vlm.prepare``)."""

    def __init__(self, vlm: VLM) -> None:
        self.vlm = vlm
        self.renderer = Renderer()
        self.encoder = BatchEncoder(vlm.processor)

    def inputs(self, scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
        images = np.stack([self.renderer.render(s) for s in scenes])
        inputs = self.encoder(images, [s.prompt for s in scenes])
        inputs = {k: v.to(self.vlm.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.vlm.dtype)
        return inputs


@torch.no_grad()
def evaluate_scenes(vlm: VLM, scenes: Sequence[Scene], *, batch_size: int = 48, progress: bool = False,
                    runner: SceneRunner | None = None) -> EvalResult:
    """Top-1 accuracy of ``vlm`` on ``scenes`` with the paper's scoring."""
    runner = runner or SceneRunner(vlm)
    scenes = list(scenes)
    preds: list[str] = []
    for i in tqdm(range(0, len(scenes), batch_size), disable=not progress, desc="eval", leave=False):
        inputs = runner.inputs(scenes[i:i + batch_size])
        ids = vlm.model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1)
        preds.extend(vlm.tokenizer.convert_ids_to_tokens(ids.tolist()))
    correct = np.array([norm(p) == norm(s.answer) for p, s in zip(preds, scenes, strict=True)])
    return EvalResult(scenes, preds, correct)


@torch.no_grad()
def evaluate_toolkit_table1(vlm: VLM, *, batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """Table 1 through the toolkit's public path: ``spatial_interp.data`` items and :meth:`VLM.prepare`.

    Independent of this package's renderer and fast encoder, so it checks that the organism works
    on the stimuli every other experiment uses.
    """
    import spatial_interp.data as sd

    out: dict[str, Any] = {}
    makers = {"squares": sd.squares_items, "shapes": sd.shapes_items, "objects": sd.objects_items}
    for task, make in makers.items():
        items = list(make(vlm.canvas))
        correct: list[bool] = []
        for i in tqdm(range(0, len(items), batch_size), disable=not progress, desc=f"table1 {task}", leave=False):
            part = items[i:i + batch_size]
            batch = vlm.prepare([it.image for it in part], [it.prompt for it in part])
            logits = vlm.forward(batch)[:, -1]
            correct.extend(sd.scoring.top1_correct(vlm.tokenizer, logits, [it.answer for it in part]))
        out[task] = {"accuracy": float(np.mean(correct)), "n": len(correct)}
    return out


def evaluation_suite(vlm: VLM, canvas: Canvas | None = None, *, seed: int = 12345, n_random: int = 600,
                     progress: bool = False) -> dict[str, Any]:
    """The organism targets: Table 1 (per task and direction), held-out random layouts and orderings.

    ``heldout_layouts`` are fresh random layouts of training orderings (seeds never used in
    training); ``heldout_orderings`` are random layouts of the ordered triples reserved by
    :func:`~spatial_interp.training.vocab.is_heldout`; ``table1_heldout_orderings`` restricts the
    Table 1 items to those triples.
    """
    canvas = canvas or CANVASES[vlm.canvas]
    runner = SceneRunner(vlm)
    out: dict[str, Any] = {"table1": {}, "table1_toolkit": evaluate_toolkit_table1(vlm, progress=progress)}
    table1_all = []
    for task in TASKS:
        res = evaluate_scenes(vlm, table1_scenes(task, canvas), progress=progress, runner=runner)
        table1_all.append(res)
        out["table1"][task] = {"accuracy": res.accuracy, "n": len(res.scenes), "by_direction": res.by("direction")}
    correct = np.concatenate([r.correct for r in table1_all])
    out["table1"]["all"] = {"accuracy": float(correct.mean()), "n": int(len(correct))}
    held = [r.subset([is_heldout(s.identities) for s in r.scenes]) for r in table1_all]
    held_correct = np.concatenate([h.correct for h in held])
    out["table1_heldout_orderings"] = {"accuracy": float(held_correct.mean()), "n": int(len(held_correct))}
    for name, split, offset in (("heldout_layouts", "train", 1), ("heldout_orderings", "heldout", 2)):
        rng = np.random.default_rng([seed, offset])
        scenes = [random_scene(rng, canvas, split=split) for _ in range(n_random)]
        res = evaluate_scenes(vlm, scenes, progress=progress, runner=runner)
        out[name] = {"accuracy": res.accuracy, "n": len(scenes), "by_task": res.by("task"),
                     "by_direction": res.by("direction")}
    return out
