"""Absolute vs relative position: does a slot probe read *order*, or only *where* a token sits? (§4 control)

The paper's §4 slot probe is trained and tested on the fixed three-slot layout, where "left slot" and
"columns 0-3" are the same cells. Any encoder with absolute position embeddings (SigLIP in Gemma-3)
gives every token its column for free, so a high §4 accuracy says nothing about an *ordering*
representation. :func:`order_vs_position` runs the same probe (:func:`~.collect.collect` +
:meth:`~.probes.Probe.fit` with ``test_items=``) on item sets that pull the two apart and reports,
each beside its chance level, a label-shuffled control and a position-only baseline:

=========  ======================================================================  =====================
key        probe trained on → tested on                                            supports an ordering
                                                                                   claim?
=========  ======================================================================  =====================
(a) fixed  paper's layout (training orderings) → paper's layout (held-out ones)    **no**: position
                                                                                   alone scores 1.0
(b) shift  triple shifted by ``i`` cells → shifted by ``j ≠ i`` cells (held-out    yes, on its conflict
           orderings); every (i, j) pair and the mean over ``i ≠ j``               rows (see below)
(c) random every shift (fixed + shifted) → random layouts (entities sorted along   yes, on its conflict
           the axis, slot = order index)                                           rows (see below)
(d) empty  blank canvases, every cell labelled by its column (row) band            no: it measures how
                                                                                   much absolute
                                                                                   position the tokens
                                                                                   carry
=========  ======================================================================  =====================

Chance is the majority-class share of the test rows (1/3 for slots, 1/n_bands for equal bands). The
**position baseline** is the accuracy, on the same test rows, of a classifier that sees only each
token's coordinate along the axis: the majority training label at that column (row), or at the
nearest trained one. It is what a probe that reads absolute position and extrapolates smoothly can
score, and it is far above chance on the paper's canvases: shifts of one cell are small against the
slot pitch (Qwen: 4 cells, baseline 0.89 over the shift pairs; Gemma: only shifts 0 and +1 fit and the
baseline is 1.0, so (b) cannot tell the two apart there), and on random layouts the leftmost of three
sorted entities is usually on the left (baseline ≈ 0.76-0.88). So an ordering claim rests on

* ``conflict_accuracy``, above all: accuracy on the test rows where the position baseline is wrong (a
  token whose column says one slot and whose order says another; ``n_conflict_rows`` of them). A probe
  reading absolute position scores near or below chance there, one reading order scores high;
* ``ordering_margin`` = accuracy − position baseline (> 0: more than position explains). A probe that
  reads order on the conflict rows but errs elsewhere can still have a negative margin
  (organism-qwen2-vl-dual: c 0.80 against a baseline 0.84, conflict rows 0.74), so the margin alone
  does not refute an ordering code.

Measured by ``tests/interventions/test_position_control.py`` (``vision_out``, squares, 48 orderings
per shift, sub-cell random layouts): organism-qwen2-vl-vision (order in the tokens' content) a 1.00,
b 1.00 (conflict 1.00), c 0.98 (conflict 0.95), d 0.33 (its RoPE-only tower gives blank-canvas tokens no
position at all); a depth-0 tiny Gemma-3 whose SigLIP position embeddings are a smooth sin/cos code
(absolute position only) a 1.00, b 1.00, c 0.85 (32 random layouts; baseline 0.89, conflict 0.05),
d 1.00.

Example::

    import spatial_interp as si
    from spatial_interp.interventions.position_control import order_vs_position

    vlm = si.load("organism-qwen2-vl-vision")
    result = order_vs_position(vlm, "squares", si.site.vision_out, n_items=48, sub_cell=True)
    result["summary"]                        # {'a': 1.0, 'b': 1.0, 'c': 0.976, 'd': 0.333}
    result["random"]["conflict_accuracy"]    # 0.946: the probe follows order where position disagrees
    result["shifted"]["accuracy"]            # train shift (rows) x test shift (columns)
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import site as sites
from ..data.canvas import CanvasGeometry, _check_orientation, canvas_for
from ..data.items import Item
from ..data.tasks import Task, empty_canvas_items, probing_items, random_probing_items, task_for
from ..site import Site, parse
from .collect import ActivationStore, collect
from .probes import Probe, band_labels, slot_labels, split_items

SLOT_CLASSES = {"horizontal": ("left", "middle", "right"), "vertical": ("top", "middle", "bottom")}

ROLES = {
    "fixed": "paper's fixed layout, held-out orderings: slot and absolute position coincide, so a probe reading "
             "position alone scores 1.0; supports no claim about ordering",
    "shifted": "trained at one shift of the triple, tested at another (held-out orderings): evidence of an "
               "ordering code where it holds on the conflict rows (position and order disagree) and beats the "
               "position baseline",
    "random": "trained on the fixed and shifted layouts, tested on random layouts: evidence of an ordering "
              "code where it holds on the conflict rows (position and order disagree) and beats the position "
              "baseline",
    "empty": "blank canvases labelled by column (row) band: how much absolute position the tokens carry; not "
             "evidence about ordering",
}


def position_sets(task: Task, geometry: str | CanvasGeometry, orientation: str = "horizontal", *,
                  n_items: int = 48, shifts: Sequence[int] | None = None, n_random: int | None = None,
                  sub_cell: bool = False, n_empty: int = 4, seed: int = 0) -> dict[str, Any]:
    """The probe item sets of the control: ``{"shifts": {k: items}, "random": items, "empty": items}``.

    ``shifts[0]`` is the paper's layout (:func:`~spatial_interp.data.tasks.probing_items`); every shift
    holds the same ``n_items`` orderings (a seeded sample of all of them), rendered with the whole triple
    moved ``k`` cells along the axis. ``shifts=None`` takes every shift that keeps the triple on the
    canvas (``geometry.slot_shifts()``: -1..+1 on Qwen's 12-cell canvas, 0..+1 on Gemma's 16-cell one).

    >>> from spatial_interp.data.tasks import task_for
    >>> sets = position_sets(task_for("squares", "qwen2_vl"), "qwen2_vl", n_items=6)
    >>> sorted(sets["shifts"]), len(sets["random"]), len(sets["empty"])
    ([-1, 0, 1], 6, 4)
    >>> [it.metadata["triple"] for it in sets["shifts"][-1]] == [it.metadata["triple"] for it in sets["shifts"][0]]
    True
    """
    geom = canvas_for(geometry)
    _check_orientation(orientation)
    valid = geom.slot_shifts()
    chosen = list(valid) if shifts is None else [int(k) for k in shifts]
    if 0 not in chosen:
        chosen = [0, *chosen]
    for k in chosen:
        geom.slot_origin(0, orientation, k)  # refuses a shift off the canvas, naming the valid range
    chosen = sorted(set(chosen))
    every = probing_items(task, geom, orientation)
    if n_items < 2:
        raise ValueError(f"n_items must be >= 2 (a probe needs training and held-out orderings), got {n_items}")
    picked = sorted(random.Random(seed).sample(range(len(every)), min(n_items, len(every))))
    by_shift = {}
    for k in chosen:
        items = every if k == 0 else probing_items(task, geom, orientation, shift=k)
        by_shift[k] = [items[i] for i in picked]
    random_items = list(random_probing_items(task, geom, orientation, n_random if n_random is not None else n_items,
                                             seed=seed, sub_cell=sub_cell))
    return {"shifts": by_shift, "random": random_items,
            "empty": list(empty_canvas_items(geom, n_empty, orientation=orientation))}


def order_vs_position(
    vlm: Any,
    task: str | Task = "squares",
    site: Site | str = sites.vision_out,
    *,
    orientation: str = "horizontal",
    n_items: int = 48,
    shifts: Sequence[int] | None = None,
    n_random: int | None = None,
    sub_cell: bool = False,
    n_empty: int = 4,
    n_bands: int = 3,
    method: str = "logreg",
    test_fraction: float = 0.25,
    seed: int = 0,
    shuffled_control: bool = True,
    heatmaps: bool = True,
    batch_size: int = 16,
    out: str | Path | None = None,
    remote: bool | str = False,
    progress: bool = False,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Slot-probe accuracy within the fixed layout, across shifts, on random layouts, and a band probe on
    blank canvases, at one ``site`` (plain data; see the module docstring for what each number supports).

    Args:
        task: ``"squares"`` / ``"shapes"`` / ``"objects"`` (the paper's option set for ``vlm.canvas``) or a Task.
        n_items: orderings per shift (the same ones at every shift), split ``1 - test_fraction`` /
            ``test_fraction`` into training and held-out orderings with ``split_items(seed)``.
        shifts: shifts of the triple in cells (default: every one that fits; 0 is always included).
        n_random: random-layout test items (default ``n_items``); ``sub_cell`` puts them at any pixel.
        n_empty: blank canvases (all identical; several only so the band probe splits by item).
        n_bands: column (row) bands of the empty-canvas probe.
        method, seed, fit_kwargs: passed to :meth:`Probe.fit`.
        shuffled_control: also fit every probe on labels permuted among each image's labelled cells, trained
            and tested on the same items: the measured chance level of that split (costly: unstructured
            labels make the solver run long).
        heatmaps: the fixed-layout probe's mean class probability at every cell over the held-out fixed
            images and over the images of every other shift (``(class, row, col)`` nested lists).
        out: a new folder for the activation store (default: a temporary folder, removed afterwards).

    Returns:
        ``{"model", "site", "task", "orientation", "classes", "method", "seed", "geometry", "shifts",
        "n_items", "sub_cell", "fixed", "shifted", "random", "empty", "summary", "heatmaps"}`` where

        * ``fixed`` / ``random``: ``{"accuracy", "chance", "shuffled_labels", "position_baseline",
          "ordering_margin", "conflict_accuracy", "n_conflict_rows", "n_train_items", "n_test_items",
          "n_test_rows", "role"}`` (``conflict_accuracy`` is ``None`` without conflict rows, always so
          for ``fixed``);
        * ``shifted``: ``accuracy``, ``position_baseline``, ``shuffled_labels``, ``conflict_accuracy`` and
          ``n_conflict_rows`` as ``[train shift][test shift]`` matrices over ``train_shift`` / ``test_shift``;
          ``accuracy_mean``, ``position_baseline_mean``, ``shuffled_labels_mean`` over the off-diagonal
          pairs (``None`` with a single shift), ``conflict_accuracy_mean`` pooled over their conflict rows
          (``n_conflict_rows_total``), ``chance``, ``ordering_margin`` and ``role``;
        * ``empty``: ``{"accuracy", "chance", "shuffled_labels", "n_bands", "bands", "n_test_rows", "role"}``;
        * ``summary``: ``{"a", "b", "c", "d"}`` = fixed, shifted off-diagonal mean, random and empty accuracy;
        * ``heatmaps``: ``{"fixed": maps, "shift+1": maps, ...}``, the fixed-layout probe's ``(class, row, col)``
          mean probabilities over the held-out fixed images and over all images of each other shift.
    """
    site = parse(site) if isinstance(site, str) else site
    if site.only_last_token:
        raise ValueError(f"{site} holds one row per item; probe a site with image cells (vision_out, lm_resid(s))")
    geom = canvas_for(vlm.canvas)
    task = task_for(task, vlm.canvas) if isinstance(task, str) else task
    sets = position_sets(task, geom, orientation, n_items=n_items, shifts=shifts, n_random=n_random,
                         sub_cell=sub_cell, n_empty=n_empty, seed=seed)
    shift_list = sorted(sets["shifts"])
    items: list[Item] = [it for k in shift_list for it in sets["shifts"][k]] + sets["random"] + sets["empty"]
    labels = slot_labels(items[:len(items) - len(sets["empty"])], geom, centres=True)
    labels.update(band_labels(sets["empty"], geom, n_bands, orientation))
    with tempfile.TemporaryDirectory(prefix="order-vs-position-") as scratch:
        root = Path(out) if out is not None else Path(scratch) / "acts"
        store = collect(vlm, items, [site], out=root, batch_size=batch_size, remote=remote, progress=progress)
        rows = _Rows(store, site, labels, geom, orientation)
        fitter = _Fitter(rows, method=method, seed=seed, shuffled=shuffled_control, fit_kwargs=fit_kwargs)
        index = {name: i for i, name in enumerate(store.item_ids())}
        ids = lambda group: [index[it.id] for it in group]  # noqa: E731

        split = {k: split_items(ids(sets["shifts"][k]), test_fraction, seed) for k in shift_list}
        fixed_probe, fixed = fitter.score(*split[0], n_classes=3)

        keys = ("accuracy", "position_baseline", "shuffled_labels", "conflict_accuracy", "n_conflict_rows")
        matrix: dict[str, list[list[Any]]] = {key: [] for key in keys}
        for i in shift_list:
            scores = [fitter.score(split[i][0], split[j][1], n_classes=3)[1] for j in shift_list]
            for key in keys:
                matrix[key].append([cell[key] for cell in scores])
        off = [(a, b) for a in range(len(shift_list)) for b in range(len(shift_list)) if a != b]
        shifted: dict[str, Any] = {"train_shift": shift_list, "test_shift": shift_list, **matrix,
                                   "chance": fixed["chance"], "n_train_items": len(split[0][0]),
                                   "n_test_items": len(split[0][1])}
        for key in ("accuracy", "position_baseline", "shuffled_labels"):
            values = [matrix[key][a][b] for a, b in off]
            shifted[f"{key}_mean"] = float(np.mean(values)) if off and None not in values else None
        n_conflict = sum(matrix["n_conflict_rows"][a][b] for a, b in off)
        shifted["n_conflict_rows_total"] = n_conflict
        shifted["conflict_accuracy_mean"] = (sum(matrix["conflict_accuracy"][a][b] * matrix["n_conflict_rows"][a][b]
                                                 for a, b in off if matrix["n_conflict_rows"][a][b]) / n_conflict
                                             if n_conflict else None)
        shifted["ordering_margin"] = (None if shifted["accuracy_mean"] is None
                                      else shifted["accuracy_mean"] - shifted["position_baseline_mean"])
        shifted["role"] = ROLES["shifted"]

        _, random_part = fitter.score([g for k in shift_list for g in ids(sets["shifts"][k])], ids(sets["random"]),
                                      n_classes=3)
        _, empty = fitter.score(*split_items(ids(sets["empty"]), test_fraction, seed), n_classes=n_bands,
                                baseline=False)
        n = geom.n_tokens
        bounds = [min(k for k in range(n) if k * n_bands // n == b) for b in range(n_bands)] + [n]
        empty.update({"n_bands": n_bands, "bands": [[bounds[b], bounds[b + 1]] for b in range(n_bands)]})

        maps: dict[str, Any] = {}
        if heatmaps:
            names = store.item_ids()
            maps["fixed"] = fixed_probe.heatmap(store, [names[g] for g in split[0][1]], site=site).values.tolist()
            for k in shift_list:
                if k:
                    maps[f"shift{k:+d}"] = fixed_probe.heatmap(store, [names[g] for g in ids(sets["shifts"][k])],
                                                                site=site).values.tolist()
    fixed["role"], random_part["role"], empty["role"] = ROLES["fixed"], ROLES["random"], ROLES["empty"]
    return {
        "model": getattr(getattr(vlm, "info", None), "name", None), "site": str(site), "task": task.name,
        "orientation": orientation, "classes": list(SLOT_CLASSES[orientation]), "method": method, "seed": seed,
        "geometry": {"n_tokens": geom.n_tokens, "entity_tokens": geom.entity_tokens,
                     "spacing_tokens": geom.spacing_tokens},
        "shifts": shift_list, "sub_cell": sub_cell,
        "n_items": {"per_shift": len(sets["shifts"][0]), "random": len(sets["random"]), "empty": len(sets["empty"])},
        "fixed": fixed, "shifted": shifted, "random": random_part, "empty": empty,
        "summary": {"a": fixed["accuracy"], "b": shifted["accuracy_mean"], "c": random_part["accuracy"],
                    "d": empty["accuracy"]},
        "heatmaps": maps,
    }


class _Rows:
    """Every labelled row of one site: features, label, item (group) and coordinate along the axis."""

    def __init__(self, store: ActivationStore, site: Site, labels: dict[str, dict[int, int]],
                 geometry: CanvasGeometry, orientation: str) -> None:
        ids = store.item_ids()
        n = geometry.n_tokens
        for name in ids:
            if store.grid(name) != (n, n):
                raise ValueError(f"item {name} has a {store.grid(name)} token grid but the model's canvas is "
                                 f"{n}x{n} cells: slot labels would name the wrong tokens")
        values, item, cell = store.rows(site)
        y = np.array([labels.get(ids[i], {}).get(int(c), -1) for i, c in zip(item, cell, strict=True)],
                     dtype=np.int64)
        keep = y >= 0
        self.X, self.y, self.groups = values[keep], y[keep], item[keep].astype(np.int64)
        cells = cell[keep].astype(np.int64)
        self.along = cells % n if orientation == "horizontal" else cells // n
        self.n_positions = n


class _Fitter:
    def __init__(self, rows: _Rows, *, method: str, seed: int, shuffled: bool, fit_kwargs: dict[str, Any]) -> None:
        self.rows, self.method, self.seed, self.shuffled, self.fit_kwargs = rows, method, seed, shuffled, fit_kwargs
        self._shuffled_y: np.ndarray | None = None

    def shuffled_y(self) -> np.ndarray:
        """The labels permuted among each image's labelled cells (seeded): every image keeps its class counts,
        no cell keeps its meaning. Computed once, so every shuffled fit sees the same control labels."""
        if self._shuffled_y is None:
            r, rng = self.rows, np.random.default_rng(self.seed)
            y = r.y.copy()
            for g in np.unique(r.groups):
                where = np.flatnonzero(r.groups == g)
                y[where] = y[rng.permutation(where)]
            self._shuffled_y = y
        return self._shuffled_y

    def _fit(self, y: np.ndarray, train: Sequence[int], test: Sequence[int], n_classes: int) -> Probe:
        r = self.rows
        mask = np.isin(r.groups, list(train) + list(test))
        return Probe.fit((r.X[mask], y[mask], r.groups[mask]), test_items=list(test), method=self.method,
                         classes=[str(k) for k in range(n_classes)], seed=self.seed, **self.fit_kwargs)

    def score(self, train: Sequence[int], test: Sequence[int], *, n_classes: int,
              baseline: bool = True) -> tuple[Probe, dict[str, Any]]:
        r = self.rows
        if set(train) & set(test):
            raise AssertionError("train and test items overlap")
        probe = self._fit(r.y, train, test, n_classes)
        tr, te = np.isin(r.groups, list(train)), np.isin(r.groups, list(test))
        counts = np.bincount(r.y[te], minlength=n_classes)
        result: dict[str, Any] = {"accuracy": float(probe.report.accuracy),
                                  "chance": float(counts.max() / counts.sum()), "n_train_items": len(train),
                                  "n_test_items": len(test), "n_test_rows": int(te.sum())}
        if baseline:
            by_position = _position_predictor(r.along[tr], r.y[tr], n_classes, r.n_positions)
            agrees = by_position[r.along[te]] == r.y[te]
            result["position_baseline"] = float(agrees.mean())
            result["ordering_margin"] = result["accuracy"] - result["position_baseline"]
            conflict = ~agrees
            result["n_conflict_rows"] = int(conflict.sum())
            result["conflict_accuracy"] = (float((probe.predict(r.X[te][conflict]) == r.y[te][conflict]).mean())
                                           if conflict.any() else None)
        result["shuffled_labels"] = None
        if self.shuffled:
            result["shuffled_labels"] = float(self._fit(self.shuffled_y(), train, test, n_classes).report.accuracy)
        return probe, result


def _position_predictor(train_pos: np.ndarray, train_y: np.ndarray, n_classes: int, n_positions: int) -> np.ndarray:
    """Per coordinate along the axis: the majority training label there, or at the nearest trained coordinate(s)."""
    counts = np.zeros((n_positions, n_classes))
    np.add.at(counts, (train_pos, train_y), 1)
    seen = np.flatnonzero(counts.sum(1) > 0)
    predicted = np.empty(n_positions, dtype=np.int64)
    for p in range(n_positions):
        distance = np.abs(seen - p)
        predicted[p] = int(counts[seen[distance == distance.min()]].sum(0).argmax())
    return predicted


__all__ = ["ROLES", "SLOT_CLASSES", "order_vs_position", "position_sets"]
