"""Steering (§8.3): amplify a probe's directions at the image positions of one site.

At every chosen position ``h ← h + α · Σ_k (⟨h, w_k⟩ / (‖w_k‖² + 1e-8)) · w_k`` (projections onto the
directions ``w_k`` are added without orthogonalising them; the directions are cast to the model
dtype). The default site is ``lm_resid(0)`` at all image positions — the decoder-layer-0 input the
paper edits. Each call is one prefill forward scoring the next token, so generated tokens are never
steered. Several α share a forward (the item batch is stacked once per α).

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
from .examples import Example, RegionSpec, as_example, resolve_region
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
) -> tuple[Tensor, Tensor, list[str]]:
    """``(values (alpha, item, m), unsteered (item, m), metric names)``; see :func:`steer`."""
    examples = [as_example(i) for i in items]
    if not examples:
        raise ValueError("steer() needs at least one item")
    alphas = check_alphas(alphas)
    check_batch_size(batch_size)
    site = resolve(site)
    vlm.check_site(site)
    metric = metric if metric is not None else raw_logits()
    per_forward_items = min(batch_size, len(examples))
    outputs, baselines, names = [], [], None
    chunks = range(0, len(examples), per_forward_items)
    alphas_per_forward = max(1, batch_size // per_forward_items)
    forwards = len(chunks) * -(-len(alphas) // alphas_per_forward)
    with tqdm(total=forwards, desc="steer", unit="fwd", disable=not progress, dynamic_ncols=True) as bar:
        for start in chunks:
            chunk = examples[start:start + per_forward_items]
            batch = vlm.prepare([e.image for e in chunk], [e.prompt for e in chunk], system=system)
            targets = [layout.indices(resolve_region(region, ex, layout), site) if not site.only_last_token
                       else layout.indices(None, site) for ex, layout in zip(chunk, batch.layouts, strict=True)]
            weights = [_directions_for(directions, ex, vlm.d_model) for ex in chunk]
            # One unsteered forward gives the baseline and, for LM sites, the vision embeddings that
            # the steered forwards reuse instead of re-running the vision tower per α.
            reads = [] if site.is_vision else vision_feature_reads(batch.layouts)
            base = run(vlm, batch, reads=reads, remote=remote)
            values, names = evaluate(metric, base.logits, chunk)
            baselines.append(values)
            features = None if site.is_vision else base.reads[0]
            per_alpha: list[Tensor] = []
            for a0 in range(0, len(alphas), alphas_per_forward):
                group = alphas[a0:a0 + alphas_per_forward]
                stacked = repeat_batch(vlm, batch, len(group))
                edits = []
                for r, alpha in enumerate(group):
                    if alpha == 0:
                        continue  # α = 0 is the unsteered forward: no edit at all, whatever the directions
                    for j in range(len(chunk)):
                        layout = stacked.layouts[r * len(chunk) + j]
                        positions = targets[j]
                        rows = None if site.is_vision else torch.full_like(positions, layout.batch_index)
                        if site.is_vision:
                            positions = layout.indices(resolve_region(region, chunk[j], layout), site)
                        edits.append(Edit.steer(site, rows, positions, weights[j],
                                                torch.full((positions.numel(),), alpha)))
                fed = None if features is None else torch.cat([features] * len(group))
                out = run(vlm, stacked, edits, vision_features=fed, remote=remote)
                for r in range(len(group)):
                    per_alpha.append(evaluate(metric, out.logits[r * len(chunk):(r + 1) * len(chunk)], chunk)[0])
                bar.update(1)
            outputs.append(torch.stack(per_alpha))
    return torch.cat(outputs, dim=1), torch.cat(baselines), names


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
    examples = [as_example(i) for i in items]
    if metric is None:
        metric = top1(vlm.tokenizer) if examples and examples[0].answer is not None else default_metric(vlm, examples)
    values, baseline, names = steer_logits(vlm, examples, directions, alphas, site=site, region=region, metric=metric,
                                           batch_size=batch_size, system=system, remote=remote, progress=progress)
    coords = {"alpha": [float(a) for a in alphas], "item": [e.name for e in examples], "metric": names}
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
    """
    alphas = check_alphas(alphas)
    check_batch_size(batch_size)
    examples = [as_example(i) for i in items]
    if not examples or examples[0].answer is None:
        raise ValueError("amplification() scores top-1 answers: give items with an answer")
    # Both direction sets are checked (shape, finiteness) before the probe run does any work.
    k = _directions_for(directions, examples[0], vlm.d_model).shape[0]
    if random is None:
        random = random_directions(vlm.d_model, k, seed=seed)
    else:
        _directions_for(random, examples[0], vlm.d_model)
    options = dict(alphas=alphas, site=site, region=region, batch_size=batch_size, system=system,
                   remote=remote, progress=progress)
    probe_run = steer(vlm, examples, directions, **options)
    random_run = steer(vlm, examples, random, **options)
    summary = amplification_summary(probe_run, random_run, groups)
    summary["seed"] = seed
    return summary, probe_run, random_run
