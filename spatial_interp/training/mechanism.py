"""Measured mechanism of an organism: slot probes, vision_out patching, probe-direction amplification.

These are the organism's scientific sanity numbers (issue 5, item 5), measured with the toolkit's
own primitives (``collect`` + ``Probe``, ``sweep``/``patch`` with the paper's regions, ``steer``'s
amplification) on the training package's scenes, which :class:`SceneItem` presents as items.

- **Slot probe**: a 3-class logistic regression (slot 0/1/2 along the query axis) on the cells of
  each entity (the cells whose centre its box covers), fitted on random-layout training images and
  scored on held-out images, at ``vision_out`` and every ``lm_resid`` slot.
- **Patching at vision_out** on criss-cross pairs (clean = Table 1 item, counterfactual = the
  reversed triple, same prompt; pairs kept when both are answered correctly): the counterfactual's
  ``vision_out`` rows are written into the clean run over a region. *flip* = the prediction is the
  counterfactual answer; *changed* = the predicted token differs from the unpatched clean run's.
  ``same`` pairing copies each cell from the same cell; ``swap`` pairing (the paper's criss-cross)
  copies the left/top region from the right/bottom one and vice versa, so identities stay put and
  only the tokens' context changes. ``clean_to_clean`` patches the clean run into itself.
- **Amplification**: ``h ← h + α Σ_k (⟨h, w_k⟩ / ‖w_k‖²) w_k`` at every image position of
  ``lm_resid(0)`` with the ``lm_resid(0)`` slot probe's class directions ``w_k`` (spec §8.3), against
  random directions with the same norms; top-1 accuracy per α.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.interventions import as_example
    >>> from spatial_interp.training.mechanism import SceneItem, measure_mechanism
    >>> from spatial_interp.training.stimuli import CANVASES, paper_scene
    >>> item = SceneItem(paper_scene("squares", ("red", "green", "blue"), "left", CANVASES["qwen2_vl"]), "0")
    >>> as_example(item).answer, item.orientation, as_example(item).image.size
    ('red', 'horizontal', (336, 336))
    >>> report = measure_mechanism(si.load("organism-qwen2-vl"), n_probe_train=60, n_probe_test=20,
    ...                            n_pairs=24, n_amplify=48, alphas=(0, 4))  # doctest: +SKIP
    >>> report["patching"]["clean_to_clean"]["changed"]  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .. import site as sites
from ..geometry import ImageLayout, Region
from ..interventions import PatchPair, Probe, collect, patch, sweep
from ..interventions.examples import Example
from ..interventions.metrics import combine, top1, top_token
from ..interventions.paper import object_swap, strip_swap
from ..interventions.steer import amplification as steer_amplification
from ..interventions.steer import random_directions
from ..models.vlm import VLM
from ..results import LabelledArray
from ..site import Site
from .evaluate import SceneRunner, evaluate_scenes
from .stimuli import CANVASES, Canvas, Entity, Renderer, Scene, random_scene, table1_scenes
from .vocab import TASKS


# --- scenes as toolkit items --------------------------------------------------------------------
@dataclass(frozen=True)
class SceneItem:
    """A :class:`Scene` read like a ``spatial_interp.data`` item, by ``as_example`` and the paper's region
    functions. The image is rendered on each access, so long item lists stay small; items made together
    share one ``renderer`` (its sprite cache)."""

    scene: Scene
    id: str
    renderer: Renderer = field(default_factory=Renderer, repr=False, compare=False)

    @property
    def image(self) -> Image.Image:
        return self.renderer.image(self.scene)

    @property
    def prompt(self) -> str:
        return self.scene.prompt

    @property
    def answer(self) -> str:
        return self.scene.answer

    @property
    def orientation(self) -> str:
        return "horizontal" if self.scene.orientation == "h" else "vertical"

    @property
    def entities(self) -> tuple[Entity, Entity, Entity]:
        return self.scene.entities

    def entity_in_slot(self, slot: int) -> Entity:
        return self.scene.entities[slot]


@dataclass(frozen=True)
class ScenePair:
    """A clean item and the counterfactual patched into it, read by ``as_pair``; ``answers`` = (clean, cf)."""

    clean: SceneItem
    cf: SceneItem
    answers: tuple[str, str]
    id: str


# --- regions ------------------------------------------------------------------------------------
def entity_cells(owner: Any, layout: ImageLayout, *, centres: bool = False) -> list[Region]:
    """Each entity's cells in slot order, for a SceneItem (or an Example / PatchPair made from one)."""
    item = owner.clean if isinstance(owner, PatchPair) else owner
    item = item.source if isinstance(item, Example) else item
    return [layout.box_to_cells(e.box, centres=centres) for e in item.entities]


def objects(owner: Any, layout: ImageLayout, *, centres: bool = False) -> Region:
    first, middle, last = entity_cells(owner, layout, centres=centres)
    return first | middle | last


def background(owner: Any, layout: ImageLayout) -> Region:
    return objects(owner, layout).background()


def patch_regions(vlm: VLM) -> dict[str, tuple[Any, str]]:
    """``{name: (region function, pairing)}`` of the vision_out patches (Table 1 boxes are cell-aligned,
    so the touched cells the paper's helpers use are the entities' cells)."""
    strips = strip_swap(vlm.canvas)

    def strips_both(owner: Any, layout: ImageLayout) -> Region:
        swap = strips(owner, layout)
        return swap.a | swap.b

    return {"all": (None, "same"), "objects_same": (objects, "same"), "objects_swap": (object_swap, "swap"),
            "strips_same": (strips_both, "same"), "strips_swap": (strips, "swap"), "background": (background, "same")}


# --- probes -------------------------------------------------------------------------------------
def probe_sites(vlm: VLM) -> list[Site]:
    return [sites.vision_out, *[sites.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]]


def fit_slot_probes(vlm: VLM, orientation: str, *, n_train: int = 240, n_test: int = 80, seed: int = 7,
                    batch_size: int = 32) -> dict[str, Any]:
    """Slot-probe accuracy per site on held-out random-layout images of one orientation (``"h"``/``"v"``)."""
    canvas = CANVASES[vlm.canvas]
    direction = "left" if orientation == "h" else "above"
    rng = np.random.default_rng([seed, 0 if orientation == "h" else 1])
    renderer = Renderer()
    items = [SceneItem(random_scene(rng, canvas, task=TASKS[i % 3], direction=direction), f"{orientation}{i}",
                       renderer) for i in range(n_train + n_test)]
    # Every scene is drawn on the same canvas, so one image's layout maps every scene's boxes to cells.
    layout = vlm.prepare([items[0].image], [items[0].prompt]).layouts[0]
    labels = {item.id: {int(f): slot for slot, cells in enumerate(entity_cells(item, layout, centres=True))
                        for f in cells.flat} for item in items}
    held_out = [item.id for item in items[n_train:]]
    with tempfile.TemporaryDirectory() as folder:
        store = collect(vlm, items, probe_sites(vlm), functools.partial(objects, centres=True), out=folder,
                        batch_size=batch_size, progress=False)
        probes = {str(s): Probe.fit(store, labels, site=s, test_items=held_out, max_iter=3000)
                  for s in probe_sites(vlm)}
    return {"accuracy": {s: p.report.accuracy for s, p in probes.items()}, "probes": probes,
            "n_train_images": n_train, "n_test_images": n_test}


# --- patching -----------------------------------------------------------------------------------
def table1_pool(canvas: Canvas) -> list[Scene]:
    return [s for t in TASKS for s in table1_scenes(t, canvas)]


def criss_cross_pairs(vlm: VLM, canvas: Canvas, n_pairs: int, seed: int = 0) -> list[ScenePair]:
    """Table 1 items with their reversed-triple counterfactual, kept when both are answered correctly."""
    pool = table1_pool(canvas)
    order = np.random.default_rng(seed).permutation(len(pool)).tolist()
    runner = SceneRunner(vlm)  # one encoder for every round: it caches each prompt's token rows
    pairs: list[ScenePair] = []
    for start in range(0, len(order), 64):
        chosen = order[start:start + 64]
        # Scored with the training encoder (same inputs as vlm.prepare, tests/organism/test_shipped.py): the
        # search renders hundreds of candidates, and the processor's per-image path is slow at 896 px (Gemma).
        scored = evaluate_scenes(vlm, [s for i in chosen for s in (pool[i], pool[i].reversed())],
                                 batch_size=2 * len(chosen), runner=runner)
        pairs += [ScenePair(SceneItem(pool[i], f"{i}", runner.renderer),
                            SceneItem(pool[i].reversed(), f"{i}-cf", runner.renderer),
                            (pool[i].answer, pool[i].reversed().answer), f"{i}")
                  for i, both in zip(chosen, scored.correct.reshape(-1, 2).all(1), strict=True) if both]
        if len(pairs) >= n_pairs:
            break
    return pairs[:n_pairs]


def vision_out_patching(vlm: VLM, pairs: Sequence[ScenePair], batch_size: int = 24) -> dict[str, dict[str, float]]:
    """Flip and change rates per patch region at ``vision_out`` (see the module docstring)."""
    metric = combine({"flip": top1(vlm.tokenizer, which=1), "token": top_token()})
    plan = patch_regions(vlm)
    swept = sweep(vlm, pairs, [sites.vision_out], {name: spec for name, (spec, _) in plan.items()}, metric,
                  pairing={name: pairing for name, (_, pairing) in plan.items()}, pairs_per_chunk=batch_size,
                  batch_size=2 * batch_size, progress=False)
    unpatched = swept.extras["clean"].sel(metric="token.top_token").values

    def rates(patched: LabelledArray) -> dict[str, float]:
        return {"flip": float(np.mean(patched.sel(metric="flip.top1").values, dtype=float)),
                "changed": float(np.mean(patched.sel(metric="token.top_token").values != unpatched)),
                "n": len(pairs)}

    out = {name: rates(swept.sel(site=str(sites.vision_out), region=name)) for name in plan}
    out["clean_to_clean"] = rates(patch(vlm, [dataclasses.replace(p, cf=p.clean) for p in pairs], sites.vision_out,
                                        metric=metric, batch_size=batch_size))
    return out


# --- amplification ------------------------------------------------------------------------------
def amplification(vlm: VLM, probes: dict[str, Probe], items: Sequence[SceneItem], alphas: Sequence[float],
                  seed: int = 0, batch_size: int = 48) -> dict[str, dict[str, float]]:
    """Top-1 accuracy on ``items`` per α when amplifying the ``"h"``/``"v"`` probes' directions (each item
    its own axis's) at lm_resid(0), and random directions of the same norms."""
    axis = {"horizontal": probes["h"].directions, "vertical": probes["v"].directions}
    control = {name: random_directions(vlm.d_model, len(w), seed=seed + k) * w.norm(dim=1, keepdim=True)
               for k, (name, w) in enumerate(axis.items())}

    def by_axis(table: dict[str, Any]) -> Any:
        return lambda example: table[example.source.orientation]

    _, probe_run, random_run = steer_amplification(vlm, items, by_axis(axis), alphas, random=by_axis(control),
                                                   seed=seed, batch_size=batch_size, progress=False)
    return {kind: {f"{a:g}": float(np.mean(run.sel(alpha=a, metric="top1").values, dtype=float))
                   for a in run.coords["alpha"]}
            for kind, run in (("probe", probe_run), ("random", random_run))}


def measure_mechanism(vlm: VLM, *, n_probe_train: int = 240, n_probe_test: int = 80, n_pairs: int = 120,
                      n_amplify: int = 240, alphas: Sequence[float] = (0, 1, 2, 4, 8, 16), seed: int = 0
                      ) -> dict[str, Any]:
    """All mechanism numbers of one organism (the model card's "Measured mechanism" section)."""
    canvas = CANVASES[vlm.canvas]
    probes = {o: fit_slot_probes(vlm, o, n_train=n_probe_train, n_test=n_probe_test) for o in ("h", "v")}
    pairs = criss_cross_pairs(vlm, canvas, n_pairs, seed)
    pool = table1_pool(canvas)
    chosen = np.random.default_rng([seed, 99]).choice(len(pool), n_amplify, replace=False)
    site0 = str(sites.lm_resid(0))
    renderer = Renderer()
    amp = amplification(vlm, {o: p["probes"][site0] for o, p in probes.items()},
                        [SceneItem(pool[i], f"{i}", renderer) for i in chosen], alphas, seed)
    return {
        "slot_probe": {"h": probes["h"]["accuracy"], "v": probes["v"]["accuracy"],
                       "n_train_images": n_probe_train, "n_test_images": n_probe_test},
        "patching": vision_out_patching(vlm, pairs),
        "n_pairs": len(pairs),
        "amplification": amp,
        "n_amplify_items": n_amplify,
    }
