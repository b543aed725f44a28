"""Linear probes on collected activations (§4): fit per site, split by image, map over the grid.

``Probe.fit`` trains a multi-class linear probe ``softmax(h · W + b)`` on rows of an
:class:`~.collect.ActivationStore`. Labels come from a function ``(item_id, cell) -> class`` (``None``
skips the row, e.g. background cells), so the same store serves horizontal and vertical probes.
Items, not rows, are split into train and test (no image contributes to both). Methods:

* ``"logreg"`` (default): scikit-learn's L2-regularised multinomial logistic regression objective
  (``C``), minimised exactly by Newton's method (:mod:`.logistic`; L-BFGS for very wide sites);
* ``"adamw"``: the paper's probe — ``W, b ~ N(0, 1)/√D`` from ``seed``, full-batch AdamW
  (lr 1e-3, weight decay 1e-4), 200 epochs, cross-entropy, float32.

A fitted probe applied to *every* cell of the test images, averaged, is the per-class heat map
over the grid (the "strip" maps). Weights are saved as safetensors with a JSON sidecar, never pickle.

Example:
    >>> import numpy as np
    >>> from spatial_interp.interventions.probes import Probe
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 8)).astype(np.float32); y = (X[:, 0] > 0).astype(int); groups = np.arange(60) // 3
    >>> probe = Probe.fit((X, y, groups), classes=["neg", "pos"])
    >>> probe.report.accuracy > 0.8, probe.directions.shape
    (True, torch.Size([2, 8]))
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from scipy.special import logsumexp
from torch import Tensor

from ..results import LabelledArray, artifact_paths, atomic_write, write_json
from .collect import ActivationStore
from .logistic import fit_logistic

Labels = Callable[[str, int], int | None]
PROBE_FORMAT = "spatial_interp.probe/1"


@dataclass
class ProbeReport:
    """Held-out performance: accuracy and the (true, predicted) confusion counts."""

    accuracy: float
    confusion: LabelledArray
    n_test_rows: int
    train_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "confusion": self.confusion.values.tolist(),
                "n_test_rows": self.n_test_rows, "train_loss": self.train_loss}


def split_items(items: Sequence[Any], test_fraction: float = 0.25, seed: int = 0) -> tuple[list, list]:
    """Shuffle with ``random.Random(seed)``; the first ``⌊(1 − test_fraction)·n⌋`` train (§4: 90/30)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = list(items)
    random.Random(seed).shuffle(order)
    cut = math.floor((1 - test_fraction) * len(order))
    if cut == 0 or cut == len(order):
        raise ValueError(f"{len(order)} items cannot be split {1 - test_fraction:.0%}/{test_fraction:.0%} "
                         "with both parts non-empty; collect more items")
    return order[:cut], order[cut:]


def relabelled_per_item(labels: Mapping[str, Mapping[int, int]], n_classes: int, seed: int = 0
                        ) -> dict[str, dict[int, int]]:
    """A label-shuffled control: each item's classes renamed by its own seeded permutation, so the cells'
    grouping survives but which group is which class carries no information (a probe fitted on it scores
    its split's chance level)."""
    rng = np.random.default_rng(seed)
    out = {}
    for item_id, cells in labels.items():
        rename = rng.permutation(n_classes).tolist()
        out[item_id] = {cell: rename[cls] for cell, cls in cells.items()}
    return out


def slot_labels(items: Iterable[Any], canvas: Any, *, centres: bool = False) -> dict[str, dict[int, int]]:
    """§4 labels from ``data`` items: each entity's cells → its slot (0/1/2); other cells unlabelled.

    ``canvas`` is the data canvas preset (``vlm.canvas``) or a ``CanvasGeometry``. Pass the result as
    ``labels=`` to :meth:`Probe.fit`. An entity's cells are those its box touches; with ``centres=True``
    only those whose centre lies in its box (needed for sub-cell random layouts, where two neighbours
    may touch one cell; identical for boxes on cell boundaries).
    """
    from ..data.canvas import canvas_for

    geometry = canvas_for(canvas)
    labels: dict[str, dict[int, int]] = {}
    for item in items:
        cells = labels.setdefault(str(item.id), {})
        for entity in item.entities:
            for flat in entity.flat_ids(geometry, centres=centres):
                cells[int(flat)] = int(entity.slot)
    return labels


def band_labels(items: Iterable[Any], canvas: Any, n_bands: int = 3,
                orientation: str = "horizontal") -> dict[str, dict[int, int]]:
    """Every cell of each item → its column band (``orientation="horizontal"``) or row band, ``0..n_bands-1``.

    Band of coordinate ``k`` on an ``n``-cell axis is ``k * n_bands // n`` (3 bands on 12 cells: columns
    0-3, 4-7, 8-11). A probe with these labels on blank canvases
    (:func:`~spatial_interp.data.tasks.empty_canvas_items`) measures how much absolute position the tokens
    carry. Entities are ignored.

    >>> from spatial_interp.data.tasks import empty_canvas_items
    >>> labels = band_labels(empty_canvas_items("qwen2_vl", 1), "qwen2_vl")
    >>> [labels["empty-00000"][c] for c in (0, 3, 4, 11, 12)]
    [0, 0, 1, 2, 0]
    """
    from ..data.canvas import _check_orientation, canvas_for

    _check_orientation(orientation)
    geometry = canvas_for(canvas)
    n = geometry.n_tokens
    if not 1 < n_bands <= n:
        raise ValueError(f"n_bands must be in 2..{n} for a {n}-cell axis, got {n_bands}")
    along = (lambda r, c: c) if orientation == "horizontal" else (lambda r, c: r)
    table = {geometry.flat((r, c)): along(r, c) * n_bands // n for r in range(n) for c in range(n)}
    return {str(item.id): dict(table) for item in items}


def labelled_rows(store: ActivationStore, site: Any, labels: Labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, item index)`` of the rows of ``site`` whose label is not ``None``."""
    ids = store.item_ids()
    xs, ys, gs = [], [], []
    for values, item, cell in store.chunks(site):
        y = np.array([_label(labels, ids[i], int(c)) for i, c in zip(item, cell, strict=True)], dtype=object)
        keep = np.array([v is not None for v in y], dtype=bool)
        xs.append(np.asarray(values)[keep])
        ys.append(y[keep].astype(np.int64))
        gs.append(item[keep])
    X, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    if len(y) == 0:
        raise ValueError("no labelled rows: the labels function returned None for every (item, cell)")
    return X, y, g


def _check_training_data(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """``(X float32, y int64, groups)`` after shape, label and finiteness checks.

    A NaN or inf feature makes scikit-learn raise deep inside its solver and AdamW return NaN weights
    (every later steer with them NaN), so both are refused here with the count and the fix.
    """
    if X.ndim != 2:
        raise ValueError(f"probe features X must be 2-D (rows, d), got shape {X.shape}")
    if y.ndim != 1 or groups.ndim != 1 or not len(X) == len(y) == len(groups):
        raise ValueError(f"X, y and groups must have one entry per row: got X {X.shape}, y {y.shape}, "
                         f"groups {groups.shape}")
    if len(y) == 0:
        raise ValueError("no training rows: X, y and groups are empty")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise TypeError(f"probe features X must be numbers, got dtype {X.dtype}")
    X = X.astype(np.float32)
    bad = int((~np.isfinite(X)).sum())
    if bad:
        rows = int((~np.isfinite(X)).any(1).sum())
        raise ValueError(f"probe features X have {bad} non-finite (NaN or inf) entries in {rows} of {len(X)} rows; "
                         "drop those rows (e.g. X[np.isfinite(X).all(1)]) or re-collect the activations")
    if y.dtype == bool:
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("labels y must be integer class indices 0..n_classes-1, got non-integer values "
                             f"such as {y[~np.isfinite(y) | (y != np.round(y))][:3].tolist()}")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels y must be integer class indices 0..n_classes-1, got dtype {y.dtype}; map class "
                        "names to indices and pass the names as classes=")
    return X, y, groups


def _label(labels: Labels, item_id: str, cell: int) -> int | None:
    value = labels(item_id, cell)
    return None if value is None else int(value)


@dataclass
class Probe:
    """A linear probe ``softmax(h · W + b)``; ``directions`` are the class vectors ``W.T``."""

    W: np.ndarray
    b: np.ndarray
    classes: list[str]
    site: str | None = None
    method: str = "logreg"
    train_items: list[Any] = field(default_factory=list)
    test_items: list[Any] = field(default_factory=list)
    report: ProbeReport | None = None
    config: dict[str, Any] = field(default_factory=dict)

    # --- fitting ---
    @classmethod
    def fit(
        cls,
        data: ActivationStore | tuple[np.ndarray, np.ndarray, np.ndarray],
        labels: Labels | Mapping[str, Mapping[int, int]] | None = None,
        *,
        site: Any = None,
        method: str = "logreg",
        classes: Sequence[str] | None = None,
        test_fraction: float = 0.25,
        test_items: Sequence[Any] | None = None,
        seed: int = 0,
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        C: float = 1.0,  # noqa: N803 - scikit-learn's name
        max_iter: int = 2000,
    ) -> Probe:
        """Fit on a store's ``site`` rows labelled by ``labels(item_id, cell)`` (or on ``(X, y, groups)``).

        ``labels`` may also be a mapping ``{item_id: {cell: class}}``; cells it lacks are skipped.

        Items (``groups``) are split with :func:`split_items`, or held out as named by ``test_items``
        (store item ids, or ``groups`` values) with every other item trained on; ``probe.report``
        holds test accuracy and the confusion matrix.
        """
        if isinstance(data, ActivationStore):
            if site is None and len(data.sites) == 1:
                site = data.sites[0]
            if labels is None or site is None:
                raise ValueError("fitting on a store needs labels=(item_id, cell) -> class or None, and site= "
                                 f"when it holds several sites ({', '.join(data.sites)})")
            if isinstance(labels, Mapping):
                table = labels
                labels = lambda item_id, cell: table.get(item_id, {}).get(cell)  # noqa: E731
            X, y, groups = labelled_rows(data, site, labels)
            ids = data.item_ids()
            group_names = [ids[g] for g in range(len(ids))]
        else:
            if not isinstance(data, (tuple, list)) or len(data) != 3:
                raise TypeError("Probe.fit takes an ActivationStore or a tuple (X, y, groups) of features "
                                f"(n, d), class indices (n,) and item ids (n,); got {type(data).__name__}")
            X, y, groups = (np.asarray(a) for a in data)
            group_names = None
        X, y, groups = _check_training_data(X, y, groups)
        n_classes = int(y.max()) + 1 if classes is None else len(classes)
        classes = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"labels must be class indices 0..{n_classes - 1}, got {y.min()}..{y.max()}")
        name = (lambda g: group_names[g]) if group_names is not None else (lambda g: int(g))
        every_group = sorted(set(groups.tolist()))
        if test_items is None:
            train_groups, test_groups = split_items(every_group, test_fraction, seed)
        else:
            held = set(test_items)
            test_groups = [g for g in every_group if name(g) in held]
            train_groups = [g for g in every_group if name(g) not in held]
            if not test_groups or not train_groups:
                raise ValueError(f"test_items leave {len(train_groups)} training and {len(test_groups)} test "
                                 "items with labelled rows; both must be non-empty")
        train = np.isin(groups, train_groups)
        test = np.isin(groups, test_groups)
        if method == "logreg":
            W, b, loss, solver = _fit_logreg(X[train], y[train], n_classes, C=C, max_iter=max_iter)
        elif method == "adamw":
            W, b, loss = _fit_adamw(X[train], y[train], n_classes, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                    seed=seed)
            solver = "adamw"
        else:
            raise ValueError(f"unknown probe method {method!r}; use 'logreg' or 'adamw'")
        probe = cls(W, b, classes, None if site is None else str(site), method,
                    [name(g) for g in train_groups], [name(g) for g in test_groups],
                    config={"test_fraction": None if test_items is not None else test_fraction, "seed": seed,
                            "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "C": C, "solver": solver})
        probe.report = probe.evaluate(X[test], y[test])
        probe.report.train_loss = loss
        return probe

    # --- applying ---
    @property
    def directions(self) -> Float[Tensor, "classes d"]:
        """The class vectors ``w_k`` as rows, ready for :func:`~.steer.steer`."""
        return torch.from_numpy(self.W.T.copy())

    def logits(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float32) @ self.W + self.b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.logits(X)
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(-1)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> ProbeReport:
        """Accuracy and confusion on labelled rows."""
        if len(y) == 0:
            raise ValueError("no rows to evaluate the probe on")
        predicted = self.predict(X)
        k = len(self.classes)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (np.asarray(y, dtype=np.int64), predicted), 1)
        return ProbeReport(float((predicted == y).mean()),
                           LabelledArray(confusion, ("true", "predicted"),
                                         {"true": self.classes, "predicted": self.classes}),
                           int(len(y)))

    def heatmap(self, store: ActivationStore, items: Sequence[str] | None = None, site: Any = None) -> LabelledArray:
        """Mean class probability at every cell over ``items`` (default: the test images) → ``(class, row, col)``.

        The store must hold every cell of those items at the probe's site.
        """
        site = site if site is not None else self.site
        if site is None:
            raise ValueError("give site= (this probe was fitted on arrays, so it does not know its site)")
        ids = store.item_ids()
        wanted = set(items if items is not None else self.test_items)
        if not wanted:
            raise ValueError("no items to average over")
        grid = {store.grid(i) for i in wanted}
        if len(grid) != 1:
            raise ValueError(f"items have different grids {sorted(grid)}; map them separately")
        rows, cols = grid.pop()
        total = np.zeros((rows * cols, len(self.classes)))
        count = np.zeros(rows * cols)
        for values, item, cell in store.chunks(site):
            keep = np.array([ids[i] in wanted for i in item], dtype=bool) & (cell >= 0)
            np.add.at(total, cell[keep], self.predict_proba(np.asarray(values)[keep]))
            np.add.at(count, cell[keep], 1)
        if (count == 0).any():
            raise ValueError("the store lacks some cells of these items; collect with regions=None (all cells)")
        mean = (total / count[:, None]).T.reshape(len(self.classes), rows, cols)
        return LabelledArray(mean, ("class", "row", "col"), {"class": self.classes},
                             attrs={"site": str(site), "n_items": len(wanted)})

    # --- disk ---
    def save(self, path: str | os.PathLike) -> Path:
        """``PATH.safetensors`` (W, b) and ``PATH.json`` (classes, site, split, report); returns the JSON path."""
        from safetensors.numpy import save as to_bytes

        meta_path, weights = artifact_paths(path, ".safetensors")
        blob = to_bytes({"W": np.ascontiguousarray(self.W, dtype=np.float32),
                         "b": np.ascontiguousarray(self.b, dtype=np.float32)})
        atomic_write(weights, lambda f: f.write(blob))
        meta = {"format": PROBE_FORMAT, "classes": self.classes, "site": self.site, "method": self.method,
                "train_items": self.train_items, "test_items": self.test_items, "config": self.config,
                "report": self.report.to_dict() if self.report else None}
        return write_json(meta_path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Probe:
        from safetensors.numpy import load_file

        meta_path, weights = artifact_paths(path, ".safetensors")
        if not meta_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"need both {meta_path} and {weights}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != PROBE_FORMAT:
            raise ValueError(f"{meta_path} is not a saved probe")
        tensors = load_file(str(weights))
        probe = cls(tensors["W"], tensors["b"], meta["classes"], meta["site"], meta["method"],
                    meta["train_items"], meta["test_items"], config=meta.get("config", {}))
        report = meta.get("report")
        if report:
            k = len(probe.classes)
            probe.report = ProbeReport(report["accuracy"],
                                       LabelledArray(np.array(report["confusion"]).reshape(k, k), ("true", "predicted"),
                                                     {"true": probe.classes, "predicted": probe.classes}),
                                       report["n_test_rows"], report.get("train_loss"))
        return probe


def _fit_logreg(X: np.ndarray, y: np.ndarray, n_classes: int, *, C: float,  # noqa: N803
                max_iter: int) -> tuple[np.ndarray, np.ndarray, float, str]:
    fit = fit_logistic(X, y, C=C, max_iter=max_iter)
    W = np.zeros((X.shape[1], n_classes), dtype=np.float32)
    b = np.zeros(n_classes, dtype=np.float32)
    if fit.W.shape[1] == 1:
        # A binary fit keeps one vector; softmax over (0, z) equals its sigmoid.
        W[:, fit.classes[1]] = fit.W[:, 0]
        b[fit.classes[1]] = fit.b[0]
    else:
        W[:, fit.classes] = fit.W
        b[fit.classes] = fit.b
    logits = np.asarray(X, np.float64) @ W[:, fit.classes] + b[fit.classes]
    picked = logits[np.arange(len(y)), np.searchsorted(fit.classes, y)]
    loss = float(np.mean(logsumexp(logits, axis=1) - picked))
    return W, b, loss, fit.solver


def _fit_adamw(X: np.ndarray, y: np.ndarray, n_classes: int, *, epochs: int, lr: float, weight_decay: float,
               seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    # A private generator reproduces torch.manual_seed(seed) draws without touching global RNG state.
    generator = torch.Generator().manual_seed(seed)
    d = X.shape[1]
    W = (torch.randn(d, n_classes, generator=generator) / math.sqrt(d)).requires_grad_(True)
    b = (torch.randn(n_classes, generator=generator) / math.sqrt(d)).requires_grad_(True)
    inputs, targets = torch.from_numpy(X), torch.from_numpy(y)
    optimizer = torch.optim.AdamW([W, b], lr=lr, weight_decay=weight_decay)
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(inputs @ W + b, targets)
            loss.backward()
            optimizer.step()
    return W.detach().numpy().copy(), b.detach().numpy().copy(), float(loss.detach())
