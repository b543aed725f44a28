"""Steering (§8.3): amplify a probe's directions at the image positions of one site.

At every chosen position ``h ← h + α · Σ_k (⟨h, w_k⟩ / (‖w_k‖² + 1e-8)) · w_k`` (projections onto the
directions ``w_k`` are added without orthogonalising them; the directions are cast to the model
dtype). The default site is ``lm_resid(0)`` at all image positions — the decoder-layer-0 input the
paper edits. Each call is one prefill forward scoring the next token, so generated tokens are never
steered. Several α share a forward (the item batch is stacked once per α).

Forwards per chunk of ``batch_size`` items: one unsteered forward (the baseline, and α = 0, which
*is* the unsteered run), then the α ≠ 0 rows ``batch_size`` per forward, without the vision tower
(its embeddings come from the baseline forward). :func:`amplification` steers the probe's and the
random directions from one shared baseline. Items are read and converted a chunk at a time.

Example:
    >>> import torch, spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.interventions.steer import random_directions, steer
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> items = [(Image.new("RGB", (336, 336), "red"), "The color is ")]
    >>> result = steer(vlm, items, random_directions(vlm.d_model, 2, seed=0), alphas=[0, 1, 2], progress=False)
    >>> result.axes, result.shape[:2]
    (('alpha', 'item', 'metric'), (3, 1))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..models.vlm import DEFAULT_SYSTEM, VLM
from ..results import LabelledArray, provenance
from ..site import Site, lm_resid, resolve
from .engine import Edit, check_finite, repeat_batch, run, vision_feature_reads
from .examples import Example, RegionSpec, example_chunks, prepared_chunks, resolve_region
from .metrics import Metric, default_metric, evaluate, raw_logits, top1
from .patch import check_batch_size

LM_INPUT = lm_resid(0)

Directions = Tensor | np.ndarray | Callable[[Example], Tensor]
"""``(k, d)`` directions ``w_k`` (rows), an object with a ``directions`` attribute (a Probe), or a
function ``example -> (k, d)`` (e.g. the probe of the item's axis)."""


def random_directions(d: int, k: int = 2, *, seed: int = 0) -> Float[Tensor, "k d"]:
    """``k`` Gaussian directions of unit L2 norm (the §8 Random control), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, k))
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    return torch.from_numpy(w.T.copy()).float()


def _directions_for(directions: Any, example: Example, d_model: int) -> Tensor:
    if hasattr(directions, "directions") and not callable(directions):
        directions = directions.directions
    w = directions(example) if callable(directions) else directions
    try:
        w = torch.as_tensor(np.asarray(w) if isinstance(w, np.ndarray) else w).float()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"steering directions must be a (k, d_model={d_model}) tensor or array, a fitted Probe, or "
                        f"a function example -> (k, d); got {type(w).__name__}") from None
    if w.dim() == 1:
        w = w[None]
    if w.dim() != 2 or w.shape[1] != d_model:
        raise ValueError(f"steering directions must be (k, d_model={d_model}), got {tuple(w.shape)}; "
                         "a probe's W of shape (d, k) must be transposed")
    check_finite(w, f"steering directions (for item {example.name})",
                 "fix or drop the direction rows holding them (a probe fitted on NaN features has NaN weights)")
    return w


def check_alphas(alphas: Any) -> list[float]:
    """The α grid as floats; refuses a bare number, non-numbers, NaN/inf and an empty grid."""
    if isinstance(alphas, (int, float, str, bytes)) or not isinstance(alphas, Iterable):
        raise TypeError(f"alphas must be a sequence of numbers such as [0, 1, 2] or range(16), got {alphas!r}")
    values = alphas.tolist() if isinstance(alphas, (np.ndarray, Tensor)) else list(alphas)
    if not isinstance(values, list):  # a 0-d array or tensor
        raise TypeError(f"alphas must be a sequence of numbers such as [0, 1, 2] or range(16), got {alphas!r}")
    try:
        floats = [float(a) for a in values]
    except (TypeError, ValueError):
        raise TypeError(f"alphas must all be numbers, got {values!r}") from None
    if not floats:
        raise ValueError("steer() needs at least one alpha (e.g. alphas=[0, 1, 2])")
    check_finite(np.array(floats), "alphas", f"got {floats}; give finite α values")
    return floats


def steer_logits(
    vlm: VLM,
    items: Sequence[Any],
    directions: Directions,
    alphas: Sequence[float],
    *,
    site: Site = LM_INPUT,
    region: RegionSpec = "image",
    metric: Metric | None = None,
    batch_size: int = 16,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    progress: bool = False,
) -> tuple[Float[Tensor, "alpha item m"], Float[Tensor, "item m"], list[str]]:
    """``(values (alpha, item, m), unsteered (item, m), metric names)``; see :func:`steer`."""
    runs, baseline, names, _ = steer_runs(vlm, items, [directions], alphas, site=site, region=region, metric=metric,
                                          batch_size=batch_size, system=system, remote=remote, progress=progress)
    return runs[0], baseline, names


def steer_runs(
    vlm: VLM,
    items: Sequence[Any],
    direction_sets: Sequence[Directions],
    alphas: Sequence[float],
    *,
    site: Site = LM_INPUT,
    region: RegionSpec = "image",
    metric: Metric | None = None,
    batch_size: int = 16,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    progress: bool = False,
) -> tuple[list[Float[Tensor, "alpha item m"]], Float[Tensor, "item m"], list[str], list[str]]:
    """Steer ``items`` along each of ``direction_sets`` from one shared unsteered forward per chunk.

    Returns ``(values per direction set (alpha, item, m), unsteered (item, m), metric names, item names)``.
    α = 0 takes the unsteered values (no edit at all, whatever the directions).

    >>> import spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.interventions.engine import count_forwards
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> items = [(Image.new("RGB", (336, 336), c), "The color is ") for c in ("red", "blue")]
    >>> w = [random_directions(vlm.d_model, 2, seed=s) for s in (0, 1)]
    >>> with count_forwards() as seen:
    ...     runs, base, _, _ = steer_runs(vlm, items, w, [0, 1, 2], batch_size=2)
    >>> seen.forwards, len(runs), tuple(runs[0].shape[:2])   # 1 unsteered + 2 sets × 2 α ≠ 0
    (5, 2, (3, 2))
    """
    alphas = check_alphas(alphas)
    check_batch_size(batch_size)
    if not direction_sets:
        raise ValueError("steer_runs() needs at least one set of directions")
    site = resolve(site)
    vlm.check_site(site)
    metric = metric if metric is not None else raw_logits()
    n_items = len(items) if isinstance(items, Sequence) else None
    per_forward_items = min(batch_size, n_items) if n_items else batch_size
    steered = [a for a in alphas if a != 0]
    alphas_per_forward = max(1, batch_size // per_forward_items)
    outputs: list[list[Tensor]] = [[] for _ in direction_sets]
    baselines, names, item_names = [], None, []
    total = None if n_items is None else (-(-n_items // per_forward_items)
                                          * (1 + len(direction_sets) * -(-len(steered) // alphas_per_forward)))
    with tqdm(total=total, desc="steer", unit="fwd", disable=not progress, dynamic_ncols=True) as bar:
        for chunk, batch in prepared_chunks(vlm, items, per_forward_items, system=system):
            targets = [layout.indices(resolve_region(region, ex, layout), site) if not site.only_last_token
                       else layout.indices(None, site) for ex, layout in zip(chunk, batch.layouts, strict=True)]
            weights = [[_directions_for(d, ex, vlm.d_model) for ex in chunk] for d in direction_sets]
            # One unsteered forward gives the baseline (= α 0) and, for LM sites, the vision embeddings
            # that the steered forwards reuse instead of re-running the vision tower per α.
            reads = [] if site.is_vision else vision_feature_reads(batch.layouts)
            base = run(vlm, batch, reads=reads, remote=remote)
            values, names = evaluate(metric, base.logits, chunk)
            baselines.append(values)
            item_names += [e.name for e in chunk]
            bar.update(1)
            features = None if site.is_vision else base.reads[0]
            for set_index, set_weights in enumerate(weights):
                by_alpha: dict[float, Tensor] = {}
                for a0 in range(0, len(steered), alphas_per_forward):
                    group = steered[a0:a0 + alphas_per_forward]
                    stacked = repeat_batch(vlm, batch, len(group))
                    edits = []
                    for r, alpha in enumerate(group):
                        for j in range(len(chunk)):
                            layout = stacked.layouts[r * len(chunk) + j]
                            positions = targets[j]
                            rows = None if site.is_vision else torch.full_like(positions, layout.batch_index)
                            if site.is_vision:
                                positions = layout.indices(resolve_region(region, chunk[j], layout), site)
                            edits.append(Edit.steer(site, rows, positions, set_weights[j],
                                                    torch.full((positions.numel(),), alpha)))
                    fed = None if features is None else torch.cat([features] * len(group))
                    out = run(vlm, stacked, edits, vision_features=fed, remote=remote)
                    for r, alpha in enumerate(group):
                        by_alpha[alpha] = evaluate(metric, out.logits[r * len(chunk):(r + 1) * len(chunk)], chunk)[0]
                    bar.update(1)
                outputs[set_index].append(torch.stack([values if a == 0 else by_alpha[a] for a in alphas]))
            del chunk, batch, base, features  # flat memory: nothing of this chunk outlives it
    if not baselines:
        raise ValueError("steer() needs at least one item")
    return [torch.cat(o, dim=1) for o in outputs], torch.cat(baselines), names, item_names


def steer(
    vlm: VLM,
    items: Sequence[Any],
    directions: Directions,
    alphas: Sequence[float] = range(16),
    *,
    site: Site = LM_INPUT,
    region: RegionSpec = "image",
    metric: Metric | None = None,
    batch_size: int = 16,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    progress: bool = True,
) -> LabelledArray:
    """Steer ``items`` along ``directions`` for every α; returns an ``(alpha, item, metric)`` array.

    Args:
        directions: ``(k, d)`` rows ``w_k``, a fitted Probe (its ``directions``), or a function of the item.
        alphas: the α grid (the paper's is ``0 … 15``; α = 0 replays the unsteered run).
        site: default ``lm_resid(0)``; any LM or vision site works.
        region: ``"image"`` (every image position), a Region, or a function ``(example, layout) -> Region``.
        metric: default top-1 correctness against each item's answer when items have answers.
        batch_size: rows per forward (items × α stacked).

    ``extras["baseline"]`` is the unsteered ``(item, metric)``. Non-finite α or directions, an
    empty α grid and ``batch_size < 1`` are refused before any forward.
    """
    alphas = check_alphas(alphas)
    check_batch_size(batch_size)
    site = resolve(site)
    if metric is None:
        metric = _default_metric(vlm, items)
    runs, baseline, names, item_names = steer_runs(vlm, items, [directions], alphas, site=site, region=region,
                                                   metric=metric, batch_size=batch_size, system=system,
                                                   remote=remote, progress=progress)
    return _steer_result(vlm, runs[0], baseline, names, item_names, alphas, site, batch_size)


def _default_metric(vlm: VLM, items: Sequence[Any]) -> Metric:
    """Top-1 when the first item has an answer, else :func:`~.metrics.default_metric` (converts one item only)."""
    first = next(iter(example_chunks(items, 1)), None)
    if first is None:
        raise ValueError("steer() needs at least one item")
    return top1(vlm.tokenizer) if first[0].answer is not None else default_metric(vlm, first)


def _steer_result(vlm: VLM, values: Tensor, baseline: Tensor, names: list[str], item_names: list[str],
                  alphas: list[float], site: Site, batch_size: int) -> LabelledArray:
    coords = {"alpha": [float(a) for a in alphas], "item": item_names, "metric": names}
    config = {"primitive": "steer", "site": str(site), "alphas": coords["alpha"], "batch_size": batch_size}
    result = LabelledArray(values.numpy(), ("alpha", "item", "metric"), coords, attrs={"site": str(site)},
                           provenance=provenance(vlm, config=config))
    result.extras["baseline"] = LabelledArray(baseline.numpy(), ("item", "metric"),
                                              {"item": coords["item"], "metric": names})
    return result


def amplification_summary(
    probe: LabelledArray,
    random: LabelledArray,
    groups: Sequence[str] | None = None,
    *,
    metric: str = "top1",
) -> dict[str, Any]:
    """The §8 table row: None / Probe / Probe* / Random / Random* accuracy, best α, errors fixed.

    Args:
        probe, random: :func:`steer` results (top-1 correctness) with the probe's and the random
            directions, over the same items and α grid; ``extras["baseline"]`` is the unsteered run.
        groups: the question each item belongs to (its listings ``lr``/``rl`` share one); by default
            every item is its own question. A question is correct only if all its listings are.

    A failed question is *fixed* at α when every listing that failed at baseline is now correct
    (listings already correct are not re-checked). Probe = the single α > 0 fixing the most
    questions (ties → the smallest α); Probe* = fixed by any α > 0. Accuracy = (golden + fixed) / all.
    """
    for name, result in (("probe", probe), ("random", random)):
        if result.axes != ("alpha", "item", "metric") or "baseline" not in result.extras:
            raise ValueError(f"{name} must be a steer() result (alpha, item, metric) with a baseline")
    if probe.coords["alpha"] != random.coords["alpha"] or probe.coords["item"] != random.coords["item"]:
        raise ValueError("probe and random runs must share the α grid and the items")
    alphas = np.array(probe.coords["alpha"], dtype=float)
    items = probe.coords["item"]
    groups = list(groups) if groups is not None else list(items)
    if len(groups) != len(items):
        raise ValueError(f"{len(groups)} groups for {len(items)} items")
    baseline = probe.extras["baseline"].sel(metric=metric).values > 0.5
    questions = list(dict.fromkeys(groups))
    member = np.array([[g == q for g in groups] for q in questions])  # (questions, items)
    failed_listing = member & ~baseline[None, :]
    golden = ~failed_listing.any(1)

    def fixed(result: LabelledArray) -> np.ndarray:
        correct = result.sel(metric=metric).values > 0.5  # (alpha, item)
        # Fixed iff no failed listing is still wrong.
        still_wrong = failed_listing[None] & ~correct[:, None, :]
        return (~still_wrong.any(2)) & ~golden[None]  # (alpha, question)

    n_total, n_golden = len(questions), int(golden.sum())
    n_fail = n_total - n_golden
    positive = alphas > 0
    row: dict[str, Any] = {"n_total": n_total, "n_golden": n_golden, "n_failed": n_fail,
                           "none_acc": n_golden / n_total}
    for name, result in (("probe", probe), ("random", random)):
        fixes = fixed(result)
        row[f"{name}_fixed_at_alpha0"] = int(fixes[alphas == 0].any(0).sum()) if (alphas == 0).any() else 0
        if positive.any():
            per_alpha = fixes[positive].sum(1)
            best = int(np.argmax(per_alpha))  # first maximum = the smallest α among ties
            best_fixed = int(per_alpha[best])
            any_fixed = int(fixes[positive].any(0).sum())
            row[f"best_{name}_alpha"] = float(alphas[positive][best])
        else:
            best_fixed = any_fixed = 0
            row[f"best_{name}_alpha"] = None
        row[f"{name}_acc"] = (n_golden + best_fixed) / n_total
        row[f"{name}_star_acc"] = (n_golden + any_fixed) / n_total
        row[f"{name}_pct_errors_fixed"] = 100.0 * best_fixed / n_fail if n_fail else 0.0
        row[f"{name}_star_pct_errors_fixed"] = 100.0 * any_fixed / n_fail if n_fail else 0.0
    return row


def amplification(
    vlm: VLM,
    items: Sequence[Any],
    directions: Directions,
    alphas: Sequence[float] = range(16),
    *,
    groups: Sequence[str] | None = None,
    random: Directions | None = None,
    seed: int = 0,
    site: Site = LM_INPUT,
    region: RegionSpec = "image",
    batch_size: int = 16,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    progress: bool = True,
) -> tuple[dict[str, Any], LabelledArray, LabelledArray]:
    """The §8 experiment: steer with the probe's directions and with random ones, then summarise.

    ``random`` defaults to :func:`random_directions` with as many unit Gaussian directions as the
    probe has, drawn from ``seed`` (the paper's control draws them unseeded; here they are
    reproducible). Items need answers (top-1 scoring). Returns ``(summary, probe_run, random_run)``.
    Both runs share one unsteered forward per chunk (their ``extras["baseline"]`` is the same run).
    """
    alphas = check_alphas(alphas)
    check_batch_size(batch_size)
    first = next(iter(example_chunks(items, 1)), None)
    if first is None or first[0].answer is None:
        raise ValueError("amplification() scores top-1 answers: give items with an answer")
    # Both direction sets are checked (shape, finiteness) before any forward.
    k = _directions_for(directions, first[0], vlm.d_model).shape[0]
    if random is None:
        random = random_directions(vlm.d_model, k, seed=seed)
    else:
        _directions_for(random, first[0], vlm.d_model)
    site = resolve(site)
    runs, baseline, names, item_names = steer_runs(
        vlm, items, [directions, random], alphas, site=site, region=region, metric=top1(vlm.tokenizer),
        batch_size=batch_size, system=system, remote=remote, progress=progress)
    probe_run, random_run = (_steer_result(vlm, values, baseline, names, item_names, alphas, site, batch_size)
                             for values in runs)
    summary = amplification_summary(probe_run, random_run, groups)
    summary["seed"] = seed
    return summary, probe_run, random_run
