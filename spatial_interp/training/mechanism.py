"""Measured mechanism of an organism: slot probes, vision_out patching, probe-direction amplification.

These are the organism's scientific sanity numbers (issue 5, item 5). They use plain PyTorch
hooks on the modules the adapter names for each site (``VLM.module(site)``), and the toolkit's
:class:`~spatial_interp.geometry.ImageLayout` for every row index, so they exercise the same
geometry the interventions package uses.

- **Slot probe**: a 3-class logistic regression (slot 0/1/2 along the query axis) on the cells of
  each entity, fitted on random-layout training images and scored on held-out images, at
  ``vision_out`` and every ``lm_resid`` slot.
- **Patching at vision_out** on criss-cross pairs (clean = Table 1 item, counterfactual = the
  reversed triple, same prompt; pairs kept when both are answered correctly): the counterfactual's
  ``vision_out`` rows are written into the clean run over a region, and we count answers that
  flip to the counterfactual answer. ``same`` pairing copies each cell from the same cell;
  ``swap`` pairing (the paper's criss-cross) copies the left/top region from the right/bottom
  one and vice versa, so identities stay put and only the tokens' context changes.
- **Amplification**: ``h ← h + α Σ_k (⟨h, w_k⟩ / ‖w_k‖²) w_k`` at every image position of
  ``lm_resid(0)`` with the slot probe's class directions ``w_k`` (spec §8.3), against a random
  direction of the same shape.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.training.mechanism import measure_mechanism
    >>> report = measure_mechanism(si.load("organism-qwen2-vl"), n_probe_train=60, n_probe_test=20,
    ...                            n_pairs=24)  # doctest: +SKIP
    >>> report["patching"]["clean_to_clean"]["changed"]  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from .. import site as sites
from ..geometry import ImageLayout, Region
from ..models.vlm import VLM
from ..site import Site
from .evaluate import SceneRunner, norm
from .stimuli import CANVASES, Canvas, Scene, random_scene, table1_scenes
from .vocab import TASKS

STRIP_BANDS = {12: (4, 4, 4), 16: (5, 6, 5), 15: (5, 5, 5)}
"""The authors' three-band strip tiling per grid size (spec §6)."""


# --- hooks --------------------------------------------------------------------------------------
def _hidden_of(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def hooked(vlm: VLM, site: Site, fn: Callable[[Tensor], None]) -> Iterator[None]:
    """Call ``fn`` on the live activation at ``site`` during forwards (in-place edits intervene).

    ``vision_out`` gives the flattened ``(rows, d)`` view; ``lm_resid`` gives ``(batch, pos, d)``.
    """
    module = vlm.module(site)
    if vlm.reads_input(site):
        def pre(mod, args, kwargs):
            fn(args[0] if args else kwargs["hidden_states"])

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    elif site.kind == "vision_out":
        def post(mod, args, output):
            fn(vlm.adapter.flatten_vision(vlm.adapter.vision_out_tensor(output)))

        handle = module.register_forward_hook(post)
    else:
        def post_lm(mod, args, output):
            fn(_hidden_of(output))

        handle = module.register_forward_hook(post_lm)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def run(vlm: VLM, inputs: dict[str, Tensor], edits: Sequence[tuple[Site, Callable[[Tensor], None]]] = (),
        ) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward with ``edits`` applied; returns final-position logits."""
    with contextlib.ExitStack() as stack:
        for s, fn in edits:
            stack.enter_context(hooked(vlm, s, fn))
        logits = vlm.model(**inputs, logits_to_keep=1).logits[:, -1]
    return logits, {}


@torch.no_grad()
def capture(vlm: VLM, inputs: dict[str, Tensor], capture_sites: Sequence[Site]) -> dict[Site, Tensor]:
    """Activations at several sites in one forward (detached copies)."""
    saved: dict[Site, Tensor] = {}

    def keeper(s: Site) -> Callable[[Tensor], None]:
        def keep(t: Tensor) -> None:
            saved[s] = t.detach().clone()
        return keep

    run(vlm, inputs, [(s, keeper(s)) for s in capture_sites])
    return saved


def _rows(layout: ImageLayout, region: Region | None, site: Site) -> Tensor:
    return layout.indices(region, site)


def _gather(acts: Tensor, layout: ImageLayout, region: Region | None, site: Site) -> Tensor:
    idx = _rows(layout, region, site)
    return acts[idx] if site.kind != "lm_resid" else acts[layout.batch_index, idx]


# --- regions ------------------------------------------------------------------------------------
def entity_cells(layout: ImageLayout, box: tuple[int, int, int, int]) -> Region:
    """Cells whose centre lies inside an entity's pixel box (the cells the entity mostly covers)."""
    x0, y0, x1, y1 = box
    cells = []
    for r in range(layout.grid.rows):
        for c in range(layout.grid.cols):
            bx0, by0, bx1, by1 = layout.cell_box(r, c)
            cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
            if x0 <= cx < x1 and y0 <= cy < y1:
                cells.append((r, c))
    return Region.cells(layout.grid, cells)


def strip_regions(layout: ImageLayout, orientation: str) -> tuple[Region, Region]:
    """The first and last of the three bands tiling the grid across the query axis (spec §6)."""
    g = layout.grid
    n = g.cols if orientation == "h" else g.rows
    a, m, _ = STRIP_BANDS.get(n, (n // 3, n - 2 * (n // 3), n // 3))
    make = Region.columns if orientation == "h" else Region.rows
    return make(g, 0, a), make(g, a + m, n)


# --- probes -------------------------------------------------------------------------------------
def probe_sites(vlm: VLM) -> list[Site]:
    return [sites.vision_out, *[sites.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]]


def _probe_data(vlm: VLM, runner: SceneRunner, scenes: list[Scene], chunk: int = 32
                ) -> dict[Site, tuple[np.ndarray, np.ndarray]]:
    feats: dict[Site, list[Tensor]] = {s: [] for s in probe_sites(vlm)}
    labels: list[int] = []
    for i in range(0, len(scenes), chunk):
        part = scenes[i:i + chunk]
        inputs = runner.inputs(part)
        layouts = runner.layouts(part, inputs)
        acts = capture(vlm, inputs, probe_sites(vlm))
        for scene, layout in zip(part, layouts, strict=True):
            for slot, ent in enumerate(scene.entities):
                region = entity_cells(layout, ent.box)
                for s in feats:
                    feats[s].append(_gather(acts[s], layout, region, s).float().cpu())
                labels.extend([slot] * len(region))
    y = np.array(labels)
    return {s: (torch.cat(v).numpy(), y) for s, v in feats.items()}


def fit_slot_probes(vlm: VLM, orientation: str, *, n_train: int = 240, n_test: int = 80, seed: int = 7,
                    runner: SceneRunner | None = None) -> dict[str, Any]:
    """Slot-probe accuracy per site on held-out random-layout images of one orientation."""
    runner = runner or SceneRunner(vlm)
    canvas = CANVASES[vlm.canvas]
    direction = "left" if orientation == "h" else "above"
    rng = np.random.default_rng([seed, 0 if orientation == "h" else 1])
    scenes = [random_scene(rng, canvas, task=TASKS[i % 3], direction=direction) for i in range(n_train + n_test)]
    train = _probe_data(vlm, runner, scenes[:n_train])
    test = _probe_data(vlm, runner, scenes[n_train:])
    accuracy, probes = {}, {}
    for s in probe_sites(vlm):
        clf = LogisticRegression(max_iter=3000, C=1.0)
        clf.fit(*train[s])
        accuracy[str(s)] = float(clf.score(*test[s]))
        probes[str(s)] = clf
    return {"accuracy": accuracy, "probes": probes, "n_train_images": n_train, "n_test_images": n_test}


# --- patching -----------------------------------------------------------------------------------
def criss_cross_pairs(vlm: VLM, runner: SceneRunner, canvas: Canvas, n_pairs: int, seed: int = 0
                      ) -> list[tuple[Scene, Scene]]:
    """Table 1 items with their reversed-triple counterfactual, kept when both are answered correctly."""
    rng = np.random.default_rng(seed)
    pool = [s for t in TASKS for s in table1_scenes(t, canvas)]
    order = rng.permutation(len(pool))
    pairs: list[tuple[Scene, Scene]] = []
    for start in range(0, len(order), 64):
        cand = [(pool[i], pool[i].reversed()) for i in order[start:start + 64]]
        flat = [s for pair in cand for s in pair]
        preds = _predict(vlm, runner, flat)
        for k, (clean, cf) in enumerate(cand):
            if norm(preds[2 * k]) == norm(clean.answer) and norm(preds[2 * k + 1]) == norm(cf.answer):
                pairs.append((clean, cf))
        if len(pairs) >= n_pairs:
            break
    return pairs[:n_pairs]


def _predict(vlm: VLM, runner: SceneRunner, scenes: Sequence[Scene], edits=()) -> list[str]:
    logits, _ = run(vlm, runner.inputs(scenes), edits)
    return vlm.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())


def patch_regions(layout: ImageLayout, scene: Scene) -> dict[str, list[tuple[Region, Region]]]:
    """Named patches as (clean region ← counterfactual region) lists, cells aligned row-major."""
    slots = [entity_cells(layout, e.box) for e in scene.entities]
    objects = slots[0] | slots[1] | slots[2]
    a, b = strip_regions(layout, scene.orientation)
    everything = Region.all(layout.grid)
    return {
        "all": [(everything, everything)],
        "objects_same": [(objects, objects)],
        "objects_swap": [(slots[0], slots[2]), (slots[2], slots[0])],
        "strips_same": [(a | b, a | b)],
        "strips_swap": [(a, b), (b, a)],
        "background": [(everything - objects, everything - objects)],
    }


def vision_out_patching(vlm: VLM, pairs: list[tuple[Scene, Scene]], runner: SceneRunner, chunk: int = 24
                        ) -> dict[str, dict[str, float]]:
    """Flip rates (prediction == counterfactual answer) and change rates (prediction != unpatched clean
    prediction) per patch region at ``vision_out``."""
    site = sites.vision_out
    counts: dict[str, list[tuple[bool, bool]]] = {}
    for i in range(0, len(pairs), chunk):
        part = pairs[i:i + chunk]
        clean_in = runner.inputs([c for c, _ in part])
        cf_in = runner.inputs([f for _, f in part])
        clean_lay = runner.layouts([c for c, _ in part], clean_in)
        cf_lay = runner.layouts([f for _, f in part], cf_in)
        clean_acts = capture(vlm, clean_in, [site])[site]
        cf_acts = capture(vlm, cf_in, [site])[site]
        plans = [patch_regions(lay, c) for lay, (c, _) in zip(clean_lay, part, strict=True)]
        # "changed" is measured against the unpatched clean prediction, so it isolates the patch's effect.
        clean_preds = _predict(vlm, runner, [c for c, _ in part])
        names = [*plans[0], "clean_to_clean"]
        for name in names:
            dst_rows, values = [], []
            for b in range(len(part)):
                if name == "clean_to_clean":
                    moves, source, src_lay = [(Region.all(clean_lay[b].grid),) * 2], clean_acts, clean_lay[b]
                else:
                    moves, source, src_lay = plans[b][name], cf_acts, cf_lay[b]
                for dst, src in moves:
                    dst_rows.append(_rows(clean_lay[b], dst, site))
                    values.append(source[_rows(src_lay, src, site)])
            rows, vals = torch.cat(dst_rows), torch.cat(values)

            def write(t: Tensor, rows: Tensor = rows, vals: Tensor = vals) -> None:
                t[rows] = vals.to(t.dtype)

            preds = _predict(vlm, runner, [c for c, _ in part], [(site, write)])
            for (_, cf), p, base in zip(part, preds, clean_preds, strict=True):
                counts.setdefault(name, []).append((norm(p) == norm(cf.answer), p != base))
    return {name: {"flip": float(np.mean([f for f, _ in v])), "changed": float(np.mean([c for _, c in v])),
                   "n": len(v)} for name, v in counts.items()}


# --- amplification ------------------------------------------------------------------------------
def amplification(vlm: VLM, probes: dict[str, Any], runner: SceneRunner, scenes: list[Scene],
                  alphas: Sequence[float], seed: int = 0, chunk: int = 48) -> dict[str, dict[str, float]]:
    """Accuracy on ``scenes`` when amplifying the slot-probe directions (and a random control) at lm_resid(0)."""
    site = sites.lm_resid(0)
    gen = torch.Generator().manual_seed(seed)
    directions = {}
    for o, clf in probes.items():
        w = torch.tensor(clf.coef_, dtype=torch.float32)
        directions[("probe", o)] = w
        rand = torch.randn(w.shape, generator=gen)
        directions[("random", o)] = rand / rand.norm(dim=1, keepdim=True) * w.norm(dim=1, keepdim=True)
    out: dict[str, dict[str, float]] = {"probe": {}, "random": {}}
    for kind in ("probe", "random"):
        for alpha in alphas:
            correct = []
            for i in range(0, len(scenes), chunk):
                part = scenes[i:i + chunk]
                inputs = runner.inputs(part)
                layouts = runner.layouts(part, inputs)

                def amplify(h: Tensor, part: list[Scene] = part, layouts: list = layouts, alpha: float = alpha,
                            kind: str = kind) -> None:
                    for scene, lay in zip(part, layouts, strict=True):
                        w = directions[(kind, scene.orientation)].to(h.dtype)
                        pos = lay.indices(None, site)
                        x = h[lay.batch_index, pos]
                        coef = (x @ w.T) / (w.pow(2).sum(1) + 1e-8)
                        h[lay.batch_index, pos] = x + alpha * coef @ w

                preds = _predict(vlm, runner, part, [(site, amplify)])
                correct.extend(norm(p) == norm(s.answer) for p, s in zip(preds, part, strict=True))
            out[kind][f"{alpha:g}"] = float(np.mean(correct))
    return out


def measure_mechanism(vlm: VLM, *, n_probe_train: int = 240, n_probe_test: int = 80, n_pairs: int = 120,
                      n_amplify: int = 240, alphas: Sequence[float] = (0, 1, 2, 4, 8, 16), seed: int = 0
                      ) -> dict[str, Any]:
    """All mechanism numbers of one organism (the model card's "Measured mechanism" section)."""
    torch.manual_seed(seed)
    runner = SceneRunner(vlm)
    canvas = CANVASES[vlm.canvas]
    probe_h = fit_slot_probes(vlm, "h", n_train=n_probe_train, n_test=n_probe_test, runner=runner)
    probe_v = fit_slot_probes(vlm, "v", n_train=n_probe_train, n_test=n_probe_test, runner=runner)
    pairs = criss_cross_pairs(vlm, runner, canvas, n_pairs, seed)
    patching = vision_out_patching(vlm, pairs, runner)
    rng = np.random.default_rng([seed, 99])
    pool = [s for t in TASKS for s in table1_scenes(t, canvas)]
    amp_scenes = [pool[i] for i in rng.choice(len(pool), n_amplify, replace=False)]
    site0 = str(sites.lm_resid(0))
    amp = amplification(vlm, {"h": probe_h["probes"][site0], "v": probe_v["probes"][site0]}, runner,
                        amp_scenes, alphas, seed)
    return {
        "slot_probe": {"h": probe_h["accuracy"], "v": probe_v["accuracy"],
                       "n_train_images": n_probe_train, "n_test_images": n_probe_test},
        "patching": patching,
        "n_pairs": len(pairs),
        "amplification": amp,
        "n_amplify_items": n_amplify,
    }
