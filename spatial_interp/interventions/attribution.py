"""Attribution patching: every (site, region) patching effect from one forward-backward per pair.

Exact patching (:func:`~.patch.patch`, :func:`~.sweep.sweep`) costs one forward per (site, region).
Attribution patching (AtP; Nanda 2023, Kramár et al. 2024) replaces the patched forward by its
first-order Taylor expansion around the clean run. For a metric ``m`` and a patch that writes the
source rows ``a_src[s_i]`` over the clean rows ``a[t_i]`` at a site::

    m(patched) − m(clean)  ≈  Σ_i (a_src[s_i] − a[t_i]) · ∂m/∂a[t_i]

with ``(t_i, s_i)`` exactly the aligned rows :func:`~.patch.patch_indices` gives ``si.patch`` (so
``pairing="same"`` and ``"swap"`` mean the same thing here). For one chunk of pairs the work is

1. one forward of the chunk's distinct source images, reading every source row any region needs;
2. one forward of the clean batch with one backward of the metric, reading the clean rows and
   their gradients at every site (weights stay frozen: only activation gradients are computed);

then every (site, region) estimate is a dot product on the CPU-side rows: the cost does not grow
with the number of sites or regions. The estimate is exact when the metric is linear in the
patched activation (e.g. ``answer_logit_diff`` at the last LM slot's final position); elsewhere it
is only as good as the linearisation, so :func:`attribute` can check itself against exact patching
on sampled points (``check=``) and report the agreement.

Where patches move the metric far outside the linear regime (whole-object swaps that flip the answer),
``method="ig"`` integrates the gradient along the straight path from the clean to the patched
activation instead (``steps`` midpoints; see :func:`attribute` for which rows are interpolated together):
exact for a metric quadratic in the patched rows, converging to exact patching as ``steps`` grows, and
costing ``steps`` forward-backwards per interpolated group instead of one per chunk.

The metric must be a differentiable scalar per pair: a :class:`~.metrics.TokenReadout`
(:class:`~.metrics.answer_log_odds` by default, ``log P(cf answer) − log P(clean answer)``;
:class:`~.metrics.prob_diff`, :class:`~.metrics.answer_prob`, :class:`~.metrics.answer_logit_diff`).
The default is the log-odds because probabilities saturate: where the clean answer holds nearly all
the mass, ``∂P/∂a`` is ~0 although a patch can flip the answer (README, "Attribution patching").
The same object is an ordinary metric for ``patch``/``sweep``, so estimated and exact effects are of
the same number.

Example:
    >>> import spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.geometry import Grid, Region
    >>> from spatial_interp.interventions import Example, PatchPair, attribute
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pairs = [PatchPair(Example(Image.new("RGB", (336, 336), c), "The color of the square is "),
    ...                    Example(Image.new("RGB", (336, 336), "blue"), "The color of the square is "),
    ...                    answers=("red", "blue"), answer_names=("clean answer", "cf answer"))
    ...          for c in ("red", "green")]
    >>> result = attribute(vlm, pairs, [si.site.vision_out, si.site.lm_resid(1)],
    ...                    {"left": Region.columns(Grid(12, 12), 0, 4), "all": None}, check="all", progress=False)
    >>> result.axes, result.shape, result.coords["metric"]
    (('metric', 'site', 'region', 'pair'), (1, 2, 2, 2), ['logP(cf answer)-logP(clean answer)'])
    >>> sorted(result.attrs["agreement"])[:3]
    ['active', 'by_region', 'by_site']
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..geometry import Region
from ..models.vlm import DEFAULT_SYSTEM, VLM
from ..results import LabelledArray, provenance
from ..site import Site, resolve_all
from .attention import run_gradients_attention
from .engine import Edit, Read, repeat_batch, run, run_gradients
from .examples import PatchPair, RegionSpec, as_pair, pair_name, resolve_region
from .metrics import MetricError, TokenReadout, _answers, answer_log_odds, evaluate
from .patch import Intervention, Pairing, check_batch_size, chunk_inputs, patch_indices, run_chunk
from .sweep import _Store, plan_interventions, sweep_identity

log = logging.getLogger(__name__)

CELLS = "cells"
"""``regions="cells"``: one region per grid cell, named ``r{row}c{col}`` (pairing ``"same"``)."""

ESTIMATE = "attribution patching (AtP): sum over patched rows of (source - clean activation) . d metric / d activation"
QK_ESTIMATE = ("attribution patching with AtP*'s QK fix (atp-qk): AtP, with the query and key paths through the "
               "attention layer that first reads the patched rows replaced by the exact change in its attention "
               "probabilities (softmax recomputed with the patched rows' queries and keys) times d metric / d "
               "probabilities")
ATTN_ESTIMATE = ("attribution patching with the first attention layer exact (atp-attn): (source - clean) . d metric / "
                 "d residual past that layer's attention, plus the exact change of that attention layer's output "
                 "(patched rows' queries, keys and values, softmax recomputed) . d metric / d output")
IG_ESTIMATE = ("integrated gradients (IG): sum over patched rows of (source - clean activation) . mean of d metric / "
               "d activation at {steps} midpoints of the straight path clean -> patched ({path} path)")

METHODS = ("atp", "atp-qk", "atp-attn", "ig")
FIXED_METHODS = ("atp-qk", "atp-attn")
"""AtP with the attention layer that first reads the patched rows treated exactly (see :func:`attribute`)."""
PATHS = ("point", "site", "joint")
"""How ``method="ig"`` interpolates (see :func:`attribute`): one (site, region) at a time, each site's
disjoint regions together, or every site's disjoint regions together."""
DEFAULT_STEPS = 8


class _AttributionStore(_Store):
    """Attribution progress on disk: the sweep's self-checking chunk store under its own manifest name."""

    MANIFEST = "attribution.json"


def default_readout(vlm: VLM, pairs: Sequence[PatchPair]) -> TokenReadout:
    """``log P(last answer) − log P(first answer)`` (cf against clean answer for §6 pairs); needs two answers."""
    try:
        n = len(_answers(pairs[0]))
    except MetricError as error:
        raise MetricError(f"{error}; attribute() needs a differentiable metric, by default log P(cf answer) - "
                          "log P(clean answer) from the pairs' answers") from None
    if n < 2:
        raise MetricError(f"the pairs carry {n} answer string, but the default attribution metric log P(last answer) "
                          "- log P(first answer) needs two; give PatchPair(answers=(clean, cf)) or "
                          "metric=answer_prob(tok)")
    return answer_log_odds(vlm.tokenizer)


def cell_regions(grid: Any) -> dict[str, Region]:
    """One single-cell :class:`Region` per cell of ``grid``, row-major, named ``r{row}c{col}``."""
    return {f"r{r}c{c}": Region.cells(grid, [(r, c)]) for r in range(grid.rows) for c in range(grid.cols)}


def _check_metric(metric: Any) -> TokenReadout:
    if not isinstance(metric, TokenReadout):
        raise TypeError(f"attribute() differentiates its metric inside the trace, so it must be a TokenReadout "
                        f"(prob_diff, answer_prob, answer_logit_diff from spatial_interp.interventions.metrics), "
                        f"got {type(metric).__name__}; answer_probs/top1 give several or non-differentiable outputs")
    return metric


def _regions_and_pairing(vlm: VLM, first: PatchPair, regions: Any, pairing: Any, sites: Sequence[Site],
                         system: Any) -> tuple[dict[str, RegionSpec], Any, Any]:
    """The region mapping (cells expanded), the pairing, and the grid for ``"cells"`` (else None)."""
    if isinstance(regions, str) and regions == CELLS:
        if pairing != "same":
            raise ValueError(f"regions='cells' patches each cell from the same cell of the source (pairing='same'), "
                             f"got pairing={pairing!r}")
        last = [s for s in sites if s.only_last_token]
        if last:
            raise ValueError(f"regions='cells' needs sites with image rows; {last[0]} is the final position only")
        grid = vlm.prepare([first.clean.image], [first.clean.prompt], system=system).layouts[0].grid
        return cell_regions(grid), "same", grid
    if isinstance(regions, str) and regions not in ("all", "image"):
        raise ValueError(f"unknown regions {regions!r}; use None/'all' (every cell), 'cells' (one region per "
                         "cell), a Region, a Swap, a function or a {name: spec} mapping")
    if not isinstance(regions, Mapping):
        regions = {"region": regions}
    if not regions:
        raise ValueError("attribute() needs at least one region (or regions=None for every cell)")
    return dict(regions), pairing, None


def attribute(
    vlm: VLM,
    pairs: Sequence[Any],
    sites: Sequence[Site],
    regions: Mapping[str, RegionSpec] | RegionSpec = None,
    metric: TokenReadout | None = None,
    *,
    pairing: Pairing | Mapping[str, Pairing] = "same",
    method: str = "atp",
    steps: int | None = None,
    path: str = "point",
    batch_size: int = 16,
    check: int | str = 0,
    check_seed: int = 0,
    top_k: int | None = None,
    exact_batch_size: int = 64,
    out: str | Path | None = None,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    progress: bool = True,
    seed: int | None = None,
    force: bool = False,
) -> LabelledArray:
    """Estimated patching effect of every (site, region) on every pair: a ``(metric, site, region, pair)`` array.

    Args:
        pairs: :class:`~.examples.PatchPair` objects (or ``data`` pairs, ``(clean, source)`` tuples).
        sites: any ``vision_block(k)``, ``vision_out``, ``lm_resid(s)`` (or ``.last_token``) sites.
        regions: ``{name: spec}`` as for :func:`~.sweep.sweep` (Region, Swap, function of (pair, layout),
            None for all cells), a single spec (named ``"region"``), or ``"cells"`` for one region per grid
            cell (named ``r{row}c{col}``, row-major; ``result.attrs["grid"]`` holds the grid).
        metric: a :class:`~.metrics.TokenReadout`; default :class:`~.metrics.answer_log_odds`
            (``log P(cf answer) − log P(clean answer)``, i.e. last answer against first).
        pairing: ``"same"``/``"swap"`` or one per region name, as for the sweep.
        method: ``"atp"`` (first order, above) or ``"ig"``: integrated gradients along the straight path
            from the clean to the patched activation, ``Σ_i (a_src[s_i] − a[t_i]) · mean_r ∂m/∂a[t_i]``
            at the ``steps`` midpoints ``a[t_i] + (r + ½)/steps · (a_src[s_i] − a[t_i])``. Exact for a metric
            quadratic in the patched rows even at ``steps=1``, and converging to exact patching of a
            point as ``steps`` grows with ``path="point"``.
        steps: interpolation points of ``method="ig"`` (default 8); not given with ``"atp"``.
        path: which rows ``method="ig"`` interpolates together. ``"point"``: one (site, region) at a time,
            the integrated gradient of exactly the patch the estimate is of (``steps`` forward-backwards
            of the clean batch per point); ``"site"``: at each site, regions with disjoint rows together
            (``steps`` per site and group of disjoint regions; each region's share of the joint patch);
            ``"joint"``: those groups at every site at once (``steps`` per group; mixes sites too).
        batch_size: pairs per chunk (one source forward and one clean forward-backward each; ``"ig"``
            adds one clean forward, and runs the chunk's ``steps`` copies in each forward-backward).
        check: validate against exact patching (:func:`~.sweep.sweep`'s machinery) on this many (site,
            region) points sampled uniformly with ``check_seed`` (``"all"``: every point); adds
            ``extras["exact"]`` (exact effects, NaN where unchecked) and ``attrs["agreement"]``
            (:func:`agreement`). Costs one patched run per checked point and pair.
        top_k: for the agreement's top-k recall (default: a tenth of the checked points, at least 1).
        exact_batch_size: rows per patched forward of the exact check.
        out: folder for incremental results; a re-run with the same contents resumes there (keyed like the
            sweep, :func:`~.sweep.sweep_identity`; a different fingerprint raises
            :class:`~.sweep.SweepMismatchError`). The exact check resumes from ``out/check``.
        remote: ``False``, ``True`` (NDIF) or ``"local"`` (nnsight's serialisation round trip).
        seed: recorded in the provenance and the fingerprint.
        force: with ``out``, discard what the folder holds and start over.

    Returns:
        Estimated ``metric(patched) − metric(clean)`` with one metric entry (the readout's name);
        ``extras["clean"]`` / ``extras["source"]`` hold the ``(metric, pair)`` values of the unpatched runs.
        ``attrs["method"]`` (and for ``"ig"`` ``attrs["steps"]``, ``attrs["path"]``) say how it was
        estimated; ``attrs["cost"]`` counts the traced forwards this call ran (``"forwards"``; of them with a
        backward ``"backwards"``) and their batch rows (``"rows"``; chunks resumed from ``out`` count 0).

    Example:
        >>> import spatial_interp as si
        >>> from PIL import Image
        >>> from spatial_interp.interventions import Example, PatchPair, attribute
        >>> vlm = si.load("tiny-qwen2-vl")
        >>> pair = PatchPair(Example(Image.new("RGB", (336, 336), "red"), "The color is "),
        ...                  Example(Image.new("RGB", (336, 336), "blue"), "The color is "), answers=("red", "blue"))
        >>> cells = attribute(vlm, [pair], [si.site.lm_resid(0), si.site.lm_resid(2)], "cells", progress=False)
        >>> cells.shape, cells.coords["region"][:2], cells.attrs["grid"]
        ((1, 2, 144, 1), ['r0c0', 'r0c1'], [12, 12])
        >>> ig = attribute(vlm, [pair], [si.site.lm_resid(0)], {"all": None}, method="ig", steps=2, progress=False)
        >>> ig.attrs["method"], ig.attrs["steps"], ig.attrs["path"], ig.attrs["cost"]
        ('ig', 2, 'point', {'forwards': 3, 'backwards': 1, 'rows': 4})
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("attribute() needs at least one pair")
    sites = resolve_all(sites)
    if not sites:
        raise ValueError("attribute() needs at least one site, e.g. [si.site.vision_out, si.site.lm_resid(0)]")
    for site in sites:
        vlm.check_site(site)
    check_batch_size(batch_size)
    check_batch_size(exact_batch_size, "exact_batch_size")
    if isinstance(remote, str) and remote != "local":
        raise ValueError(f"remote must be False, True or 'local', got {remote!r}")
    steps = _check_method(method, steps, path)
    first = as_pair(pairs[0])
    metric = _check_metric(metric if metric is not None else default_readout(vlm, [first]))
    regions, pairing, grid = _regions_and_pairing(vlm, first, regions, pairing, sites, system)
    interventions = plan_interventions(sites, regions, pairing)
    n_points = len(interventions)
    points = _check_points(check, n_points, check_seed)
    pair_names = [pair_name(p) for p in pairs]
    chunks = [pairs[s:s + batch_size] for s in range(0, len(pairs), batch_size)]

    config = {
        "primitive": "attribute", "model": vlm.info.name, "revision": vlm.info.revision, "dtype": str(vlm.dtype),
        "sites": [str(s) for s in sites], "regions": CELLS if grid is not None else list(regions),
        "pairing": {iv.name: iv.pairing for iv in interventions[: len(regions)]},
        "pairs": pair_names, "batch_size": batch_size, "metric": type(metric).__name__,
    }
    if method != "atp":  # AtP's key stays what it was, so folders written before method= existed resume
        config.update(method=method, steps=steps, path=path)
    if out is not None:
        # Keyed before the first forward, so a mismatch costs no compute.
        config.update(sweep_identity(vlm, pairs, regions, metric, None, system, seed))
    store = _AttributionStore(Path(out), config, force=force) if out is not None else None

    n_s, n_r = len(sites), len(regions)
    estimates = np.zeros((n_s, n_r, len(pairs)), dtype=np.float32)
    clean = np.zeros(len(pairs), dtype=np.float32)
    source = np.zeros(len(pairs), dtype=np.float32)
    names: list[str] = []
    cost = {"forwards": 0, "backwards": 0, "rows": 0}  # of the chunks computed here (not loaded from out)
    plain_estimates = np.zeros_like(estimates)  # method="atp-qk": the uncorrected AtP estimates beside it
    with store if store is not None else contextlib.nullcontext():
        bar = tqdm(total=len(chunks), desc="attribute", unit="chunk", disable=not progress, dynamic_ncols=True)
        try:
            for c, chunk in enumerate(chunks):
                lo, hi = c * batch_size, c * batch_size + len(chunk)
                base = store.load_base(c) if store is not None else None
                block = store.load_block(c, 0) if store is not None else None
                if base is None or block is None:
                    chunk_pairs = [as_pair(p) for p in chunk]
                    extra_rows = 0
                    if method == "atp":
                        values, base = _attribute_chunk(vlm, chunk_pairs, interventions, metric, n_s, n_r,
                                                        system=system, remote=remote)
                        passes = 1
                    elif method in FIXED_METHODS:
                        values, base, (plain, extra_rows) = _attribute_chunk(
                            vlm, chunk_pairs, interventions, metric, n_s, n_r, system=system, remote=remote,
                            qk_fix=method)
                        passes = 1
                        if store is not None:  # before block 0, so a resumable chunk always has both
                            store.save_block(c, 1, plain)
                        plain_estimates[:, :, lo:hi] = plain
                    else:
                        values, base, passes = _ig_chunk(vlm, chunk_pairs, interventions, metric, n_s, n_r,
                                                         steps=steps, path=path, system=system, remote=remote)
                    cost["forwards"] += passes + (2 if method == "ig" else 1) + (extra_rows > 0)
                    cost["backwards"] += passes
                    cost["rows"] += len(chunk) * (passes * (steps or 1) + (2 if method == "ig" else 1)) + extra_rows
                    if store is not None:
                        store.save_base(c, *base)
                        store.save_block(c, 0, values)
                    block = values
                elif method in FIXED_METHODS:
                    plain_estimates[:, :, lo:hi] = store.load_block(c, 1)
                estimates[:, :, lo:hi] = block
                clean[lo:hi], source[lo:hi], names = base[0][:, 0], base[1][:, 0], list(base[2])
                bar.update(1)
        finally:
            bar.close()

        coords = {"metric": names, "site": [str(s) for s in sites], "region": list(regions), "pair": pair_names}
        attrs: dict[str, Any] = {"estimate": ESTIMATE, "pairing": config["pairing"],
                                 "transform": metric.transform, "method": method}
        if method == "ig":
            attrs.update(estimate=IG_ESTIMATE.format(steps=steps, path=path), steps=steps, path=path)
        if method in FIXED_METHODS:
            layers = _qk_layers(vlm, sites)
            attrs.update(estimate=QK_ESTIMATE if method == "atp-qk" else ATTN_ESTIMATE,
                         qk_fix={"sites": [str(sites[k]) for k in layers], "layers": [layers[k] for k in layers]})
        attrs["cost"] = cost
        if grid is not None:
            attrs["grid"] = [grid.rows, grid.cols]
        result = LabelledArray(estimates[None], ("metric", "site", "region", "pair"), coords, attrs=attrs,
                               provenance=provenance(vlm, seed=seed, config=config))
        base_coords = {"metric": names, "pair": pair_names}
        result.extras["clean"] = LabelledArray(clean[None], ("metric", "pair"), base_coords)
        result.extras["source"] = LabelledArray(source[None], ("metric", "pair"), base_coords)
        if method in FIXED_METHODS:
            result.extras["atp"] = LabelledArray(plain_estimates[None], result.axes, coords)
        if points:
            exact = exact_effects(vlm, pairs, [interventions[i] for i in points], metric,
                                  batch_size=exact_batch_size, pairs_per_chunk=batch_size, system=system,
                                  remote=remote, out=None if out is None else Path(out) / "check",
                                  config={**config, "points": points}, force=force, progress=progress)
            full = np.full(estimates.shape, np.nan, dtype=np.float32)
            for row, i in enumerate(points):
                full[i // n_r, i % n_r] = exact[row]
            result.extras["exact"] = LabelledArray(full[None], result.axes, coords)
            result.attrs["agreement"] = agreement(result, result.extras["exact"], top_k=top_k)
            if method in FIXED_METHODS:
                result.attrs["agreement_atp"] = agreement(result.extras["atp"], result.extras["exact"], top_k=top_k)
            result.attrs["check"] = {"points": len(points), "of": n_points, "seed": check_seed}
        if store is not None:
            result.save(store.root / "result")
    return result


def _check_method(method: Any, steps: Any, path: Any) -> int | None:
    """``steps`` to use (None for AtP), or a ValueError naming the bad argument."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} ('atp': first-order attribution patching, 'ig': "
                         f"integrated gradients over steps=k points), got {method!r}")
    if method in ("atp", *FIXED_METHODS):
        if steps is not None:
            raise ValueError(f"steps={steps!r} is for method='ig' (AtP takes the gradient at the clean run only)")
        return None
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS} (what method='ig' interpolates together), got {path!r}")
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1 (interpolation points of method='ig'), got {steps!r}")
    return steps


def _check_points(check: int | str, n_points: int, seed: int) -> list[int]:
    """Flat (site-major) indices of the points to check exactly, sorted."""
    if isinstance(check, str):
        if check != "all":
            raise ValueError(f"check must be an int >= 0 (points to sample) or 'all', got {check!r}")
        return list(range(n_points))
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise ValueError(f"check must be an int >= 0 (points to sample) or 'all', got {check!r}")
    if check >= n_points:
        return list(range(n_points))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_points, size=check, replace=False))


def _attribute_chunk(vlm: VLM, pairs: list[PatchPair], interventions: Sequence[Intervention], metric: TokenReadout,
                     n_sites: int, n_regions: int, *, system: Any, remote: bool | str, qk_fix: str | None = None
                     ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Estimates ``(site, region, pair)`` of one chunk, and its ``(clean, source, names)`` baselines.

    With ``qk_fix`` (``"atp-qk"`` or ``"atp-attn"``, see :func:`attribute`) the estimates at the sites an LM
    attention layer reads first are corrected (:func:`_qk_fix`), and a third item holds ``(plain AtP
    estimates, batch rows of the edited forward)``."""
    n = len(pairs)
    inputs = chunk_inputs(vlm, pairs, system)
    source_at, batch_s, batch = inputs.source_at, inputs.batch_a, inputs.batch
    source_layouts = [batch_s.layouts[k] for k in source_at]
    resolved = {iv.name: [resolve_region(iv.region, pair, batch.layouts[j]) for j, pair in enumerate(pairs)]
                for iv in interventions[:n_regions]}
    # Row indices depend on the site only through its kind (every LM slot has the same positions), so
    # they are worked out once per kind: cells × slots × pairs calls would otherwise dominate.
    aligned: dict[tuple, tuple[Tensor, Tensor]] = {}

    def rows(iv: Intervention, j: int) -> tuple[Tensor, Tensor]:
        key = (iv.site.kind, iv.site.only_last_token, iv.name, j)
        if key not in aligned:
            aligned[key] = patch_indices(iv.site, resolved[iv.name][j], iv.pairing, batch.layouts[j],
                                         source_layouts[j])
        return aligned[key]

    # Per (site, pair): the union of target rows and of source rows any region touches.
    plan = []
    reads_c, reads_s = [], []
    for k in range(n_sites):
        site = interventions[k * n_regions].site
        for j in range(n):
            pieces = [rows(interventions[k * n_regions + i], j) for i in range(n_regions)]
            t_all, t_inv = torch.unique(torch.cat([t for t, _ in pieces]), return_inverse=True)
            s_all, s_inv = torch.unique(torch.cat([s for _, s in pieces]), return_inverse=True)
            segment = torch.cat([torch.full((len(t),), i, dtype=torch.long) for i, (t, _) in enumerate(pieces)])
            plan.append((t_inv, s_inv, segment))
            target, src = batch.layouts[j], source_layouts[j]
            reads_c.append(Read(site, None if site.is_vision else torch.full_like(t_all, target.batch_index), t_all))
            reads_s.append(Read(site, None if site.is_vision else torch.full_like(s_all, src.batch_index), s_all))

    out_s = run(vlm, batch_s, [], reads_s, remote=remote)
    source_values, names = evaluate(metric, out_s.logits[torch.tensor(source_at)], pairs)
    ids, coeffs = metric.weights(pairs)
    fixed = _qk_layers(vlm, [interventions[k * n_regions].site for k in range(n_sites)]) if qk_fix else {}
    if fixed:
        grads, attention = run_gradients_attention(vlm, batch, reads_c, sorted(set(fixed.values())),
                                                   metric.transform, ids, coeffs, remote=remote)
    else:
        grads = run_gradients(vlm, batch, reads_c, metric.transform, ids, coeffs, remote=remote)
    clean_values = grads.scores.float().cpu()[:, None]

    values = np.zeros((n_sites, n_regions, n), dtype=np.float32)
    for q, (t_inv, s_inv, segment) in enumerate(plan):
        k, j = divmod(q, n)
        a, g, a_src = grads.reads[q], grads.grads[q], out_s.reads[q]
        here = g.device
        t_inv, s_inv = t_inv.to(here), s_inv.to(here)
        contrib = ((a_src[s_inv].float() - a[t_inv].float()) * g[t_inv].float()).sum(-1)
        per_region = torch.zeros(n_regions, device=here).index_add_(0, segment.to(here), contrib)
        values[k, :, j] = per_region.cpu().numpy()
    if not qk_fix:
        return values, (clean_values.numpy(), source_values.numpy(), names)
    sources = {}
    for k in fixed:
        for j in range(n):
            t_all, s_all = (torch.unique(x) for x in
                            (torch.cat([rows(interventions[k * n_regions + i], j)[m] for i in range(n_regions)])
                             for m in (0, 1)))
            sources[(k, j)] = (t_all, s_all, out_s.reads[k * n + j].float().cpu(), grads.reads[k * n + j].float().cpu())
    site_rows = {(k, i, j): rows(interventions[k * n_regions + i], j) for k in fixed for i in range(n_regions)
                 for j in range(n)}
    site_list = [interventions[k * n_regions].site for k in range(n_sites)]
    parts, edited_rows = _qk_fix(vlm, batch, site_list, fixed, site_rows, sources, attention, n_regions,
                                 remote=remote)
    if qk_fix == "atp-qk":
        fixed_values = values + parts["softmax"] - parts["linear"]
    else:
        fixed_values = values.copy()
        at = sorted(fixed)
        fixed_values[at] = (parts["skip"] + parts["softmax"] + parts["value"])[at]
    return fixed_values, (clean_values.numpy(), source_values.numpy(), names), (values, edited_rows)


def _qk_layers(vlm: VLM, sites: Sequence[Site]) -> dict[int, int]:
    """``{site index: decoder layer}`` of the sites whose patched rows an LM attention layer reads first:
    ``lm_resid(s)`` is read by layer ``s`` (none after the last layer), ``vision_out`` by layer 0 (its rows
    are spliced into the LM input); vision blocks first meet the vision tower's attention (not fixed)."""
    fixed = {}
    for k, site in enumerate(sites):
        if site.kind == "vision_out":
            fixed[k] = 0
        elif site.kind == "lm_resid" and site.index < vlm.n_lm_layers:
            fixed[k] = site.index
    return fixed


def _consistent_groups(site_rows: Mapping[tuple[int, int, int], tuple[Tensor, Tensor]], sites: Sequence[int],
                       n_regions: int, n_pairs: int) -> list[list[int]]:
    """Regions grouped greedily so that, within a group, no two write different source rows into one target
    row (at any fixed site and pair): each group's patches can share one edited forward."""
    groups: list[tuple[list[int], dict]] = []
    for i in range(n_regions):
        maps = {(k, j): dict(zip(*(x.tolist() for x in site_rows[(k, i, j)]), strict=True))
                for k in sites for j in range(n_pairs)}
        for members, written in groups:
            if all(written[key].get(t, s) == s for key, m in maps.items() for t, s in m.items()):
                members.append(i)
                for key, m in maps.items():
                    written[key].update(m)
                break
        else:
            groups.append(([i], {key: dict(m) for key, m in maps.items()}))
    return [members for members, _ in groups]


def _qk_fix(vlm: VLM, batch: Any, sites: Sequence[Site], fixed: Mapping[int, int],
            site_rows: Mapping[tuple[int, int, int], tuple],
            sources: Mapping[tuple[int, int], tuple[Tensor, Tensor, Tensor]], attention: Mapping[int, Any],
            n_regions: int, *, remote: bool | str) -> tuple[np.ndarray, int]:
    """AtP*'s QK fix: per (site, region, pair), the exact-softmax change in attention probabilities of the
    layer that first reads the patched rows, propagated linearly, minus the linear estimate of that
    layer's query and key paths (which the plain AtP estimate holds).

    The patched rows' queries and keys come from one edited forward of the clean batch, stopped after
    the last layer needed: replica ``g · c + r`` writes every region of consistent group ``g`` at once
    (a row's query and key depend only on its own residual, so writing many rows at once gives each
    the query and key it has when patched alone), ``r`` separating ``vision_out`` (read by layer 0)
    from ``lm_resid`` sites. Returns the corrections ``(site, region, pair)`` and the batch rows of the
    edited forward.
    """
    from .attention import lm_attention_rows

    n = len(batch)
    groups = _consistent_groups(site_rows, sorted(fixed), n_regions, n)
    classes = sorted({sites[k].kind == "vision_out" for k in fixed})
    stacked = repeat_batch(vlm, batch, len(groups) * len(classes))
    shift = sum(lay.grid.n_cells for lay in batch.layouts)
    edits, reads, slots = [], {}, []
    for g, members in enumerate(groups):
        for k, layer in fixed.items():
            site = sites[k]
            vision = site.kind == "vision_out"
            r = g * len(classes) + classes.index(vision)
            for j in range(n):
                layout = batch.layouts[j]
                t_all, s_all, a_src, _ = sources[(k, j)]
                pieces = [site_rows[(k, i, j)] for i in members]
                t = torch.cat([p[0] for p in pieces])
                src = torch.cat([p[1] for p in pieces])
                t, first = _first_of_each(t)
                src = src[first]
                written = a_src[torch.searchsorted(s_all, src)].to(vlm.dtype)
                if vision:
                    edits.append(Edit.set(site, None, t + r * shift, written))
                    cells = torch.searchsorted(layout.vision_out_rows, t)
                    positions = layout.lm_positions[cells]
                else:
                    edits.append(Edit.set(site, torch.full_like(t, layout.batch_index + r * n), t, written))
                    positions = t
                start = sum(len(p) for p, _ in reads.get(layer, []))
                batch_rows = torch.full_like(positions, layout.batch_index + r * n)
                reads.setdefault(layer, []).append((positions, batch_rows))
                slots.append((k, j, g, layer, start, t, positions))
    rows = {layer: (torch.cat([b for _, b in parts]), torch.cat([p for p, _ in parts]))
            for layer, parts in reads.items()}
    new = lm_attention_rows(vlm, stacked, edits, rows, remote=remote)
    parts = {name: np.zeros((len(sites), n_regions, n), dtype=np.float32)
             for name in ("softmax", "linear", "value", "skip")}
    for k, j, g, layer, start, t, positions in slots:
        new_q, new_k, new_v = (x[start:start + len(t)] for x in new[layer])
        members = groups[g]
        member_rows = [torch.searchsorted(t, torch.unique(site_rows[(k, i, j)][0])) for i in members]
        b = batch.layouts[j].batch_index
        found = attention_change(attention[layer], b, positions, new_q, new_k, new_v, member_rows)
        for name, value in found.items():
            parts[name][k, members, j] = value.numpy()
        # First order past the attention: the patched rows' change times the gradient of the residual
        # stream after the attention (the skip connection into the MLP and later layers).
        t_all, s_all, a_src, a_clean = sources[(k, j)]
        mid = attention[layer].mid_grad[b]
        for i in members:
            t_i, s_i = site_rows[(k, i, j)]
            delta = a_src[torch.searchsorted(s_all, s_i)] - a_clean[torch.searchsorted(t_all, t_i)]
            parts["skip"][k, i, j] = float((delta * mid[positions[torch.searchsorted(t, t_i)]]).sum())
    return parts, len(stacked)


def _first_of_each(t: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted distinct values of ``t`` and, for each, the index of its first occurrence."""
    values, inverse = torch.unique(t, return_inverse=True)
    first = torch.full((len(values),), len(t), dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(len(t)), reduce="amin")
    return values, first


def attention_change(attention: Any, b: int, positions: Int[Tensor, " u"], new_query: Float[Tensor, "u heads d"],
                     new_key: Float[Tensor, "u kv_heads d"], new_value: Float[Tensor, "u kv_heads d"],
                     regions: Sequence[Int[Tensor, " n"]]) -> dict[str, Tensor]:
    """One attention layer's output change, per region patched together, propagated linearly from the output.

    ``positions`` (sorted) are the sequence positions whose residual the patches change; ``new_query`` /
    ``new_key`` / ``new_value`` those rows' post-rotary queries, keys and values when patched;
    ``regions[r]`` indexes into ``positions`` the rows region ``r`` patches together. With ``A`` the
    clean attention probabilities, ``A'`` the exact ones when region ``r``'s rows take their new keys (for
    every query) and queries (their own rows), ``G[h, q, j] = ∂m/∂o[h, q] · v[h, j]`` (``o`` a head's
    output before ``o_proj``), returns per region

    * ``"softmax"``: ``Σ (A' − A) · G``, the query and key paths with the softmax exact (AtP*'s QK fix);
    * ``"linear"``: the same with ``A' − A`` linearised in the query/key change (what AtP's gradient holds
      of those paths, to first order in the change of queries and keys);
    * ``"value"``: ``Σ_q Σ_t A'[h, q, t] (v'_t − v_t) · ∂m/∂o[h, q]``, the value path under the new pattern.

    ``softmax + value`` is ``Σ (o' − o) · ∂m/∂o``: the layer's exact output change, first order after it.

    Example:
        >>> import torch
        >>> from spatial_interp.interventions.attention import LMAttention
        >>> from spatial_interp.interventions.attribution import attention_change
        >>> g = torch.Generator().manual_seed(0)
        >>> q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
        >>> att = LMAttention(q, k, v, torch.zeros(1, 1, 5, 5), 0.5, torch.randn(1, 5, 2, 4, generator=g), 0.0)
        >>> rows = [x[0, :, [1, 3]].transpose(0, 1) for x in (q, k, v)]
        >>> same = attention_change(att, 0, torch.tensor([1, 3]), *rows, [torch.tensor([0]), torch.tensor([0, 1])])
        >>> sorted(same), bool(max(x.abs().max() for x in same.values()) < 1e-6)  # nothing changed
        (['linear', 'softmax', 'value'], True)
    """
    q, k, v = (x.double() for x in attention.heads(b))
    heads = q.shape[0]
    new_q = new_query.double().transpose(0, 1)
    new_k = new_key.double()
    if new_k.shape[1] != heads:
        new_k = new_k.repeat_interleave(heads // new_k.shape[1], dim=1)
    new_k = new_k.transpose(0, 1)
    new_v = new_value.double()
    if new_v.shape[1] != heads:
        new_v = new_v.repeat_interleave(heads // new_v.shape[1], dim=1)
    d_v = new_v.transpose(0, 1) - v[:, positions]
    mask = attention.mask[b].double()
    scale = attention.scaling
    grad_out = attention.output_grad[b].double().transpose(0, 1)
    logits = q @ k.transpose(-1, -2) * scale + mask
    log_z = logits.logsumexp(-1, keepdim=True)
    log_z = torch.where(torch.isfinite(log_z), log_z, torch.zeros_like(log_z))
    probs = (logits - log_z).exp()
    # ∂m/∂A[h, q, j] (A enters the metric only through o = A v) and ∂m/∂logit (softmax backward).
    g_a = grad_out @ v.transpose(-1, -2)
    centred = g_a - (probs * g_a).sum(-1, keepdim=True)
    g_logit = probs * centred
    n_r, seq = len(regions), q.shape[1]
    member = torch.zeros(len(positions), n_r, dtype=torch.float64)
    for r, idx in enumerate(regions):
        member[idx, r] = 1.0
    own_rows = torch.zeros(seq, n_r, dtype=torch.float64)
    own_rows[positions] = member
    d_k = new_k - k[:, positions]
    # Key side, every query outside the region: only the region's key columns move, so the row's new
    # softmax is its old one renormalised (den) with those columns rescaled.
    old_cols = probs[:, :, positions]
    new_cols = (q @ new_k.transpose(-1, -2) * scale + mask[:, :, positions] - log_z).exp()
    moved = new_cols - old_cols
    den = 1.0 + moved @ member
    outside = 1.0 - own_rows
    exact = ((moved * centred[:, :, positions]) @ member) / den
    linear = (g_logit[:, :, positions] * (q @ d_k.transpose(-1, -2) * scale)) @ member
    # The value path: o' − o gains Σ_t A'[q, t] Δv_t, with A'[q, t] = new_cols / den for t in the region.
    value_dot = grad_out @ d_v.transpose(-1, -2)
    value_k = ((new_cols * value_dot) @ member) / den
    key_exact, key_linear = (exact * outside).sum((0, 1)), (linear * outside).sum((0, 1))
    key_value = (value_k * outside).sum((0, 1))
    # Query side, the region's own rows: new query against every key, the region's keys new too.
    inst_r, inst_u = member.t().nonzero(as_tuple=True)
    at = positions[inst_u]
    e_inst, e_u = [], []
    for r, idx in enumerate(regions):
        mine = (inst_r == r).nonzero().flatten()
        e_inst.append(mine.repeat_interleave(len(idx)))
        e_u.append(idx.repeat(len(mine)))
    e_inst, e_u = torch.cat(e_inst), torch.cat(e_u)
    q_new = new_q[:, inst_u]
    row = q_new @ k.transpose(-1, -2) * scale
    row[:, e_inst, positions[e_u]] = (q_new[:, e_inst] * new_k[:, e_u]).sum(-1) * scale
    new_probs = (row + mask[:, at]).softmax(-1).nan_to_num(0.0)
    exact_q = ((new_probs - probs[:, at]) * g_a[:, at]).sum((0, 2))
    lin = (q_new - q[:, at]) @ k.transpose(-1, -2) * scale
    lin[:, e_inst, positions[e_u]] += (q[:, at][:, e_inst] * d_k[:, e_u]).sum(-1) * scale
    linear_q = (g_logit[:, at] * lin).sum((0, 2))
    value_q = (new_probs[:, e_inst, positions[e_u]] * (grad_out[:, at][:, e_inst] * d_v[:, e_u]).sum(-1)).sum(0)

    def per_region(x: Tensor, index: Tensor) -> Tensor:
        return torch.zeros(n_r, dtype=torch.float64).index_add_(0, index, x)

    return {"softmax": (key_exact + per_region(exact_q, inst_r)).float(),
            "linear": (key_linear + per_region(linear_q, inst_r)).float(),
            "value": (key_value + per_region(value_q, inst_r[e_inst])).float()}


def _ig_paths(path: str, n_sites: int, n_regions: int, disjoint: np.ndarray) -> list[list[tuple[int, int]]]:
    """The (site, region) points interpolated together, one list per group of forward-backwards.

    ``disjoint[k, i, i2]``: regions ``i`` and ``i2`` touch no common target row at site ``k`` for any pair.
    Regions are grouped greedily (in order) into sets of pairwise disjoint ones.
    """
    if path == "point":
        return [[(k, i)] for k in range(n_sites) for i in range(n_regions)]
    groups_at = []
    for k in range(n_sites):
        groups: list[list[int]] = []
        for i in range(n_regions):
            home = next((g for g in groups if all(disjoint[k, i, i2] for i2 in g)), None)
            if home is None:
                groups.append([i])
            else:
                home.append(i)
        groups_at.append(groups)
    if path == "site":
        return [[(k, i) for i in g] for k, groups in enumerate(groups_at) for g in groups]
    # "joint": group g at every site together (sites with fewer groups join the ones they have).
    n_groups = max(len(g) for g in groups_at)
    return [[(k, i) for k, groups in enumerate(groups_at) if g < len(groups) for i in groups[g]]
            for g in range(n_groups)]


def _ig_chunk(vlm: VLM, pairs: list[PatchPair], interventions: Sequence[Intervention], metric: TokenReadout,
              n_sites: int, n_regions: int, *, steps: int, path: str, system: Any, remote: bool | str
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, list[str]], int]:
    """Integrated-gradient estimates ``(site, region, pair)`` of one chunk, its baselines, and the number of
    forward-backwards run (each over ``steps`` copies of the chunk)."""
    n = len(pairs)
    inputs = chunk_inputs(vlm, pairs, system)
    source_at, batch_s, batch = inputs.source_at, inputs.batch_a, inputs.batch
    source_layouts = [batch_s.layouts[k] for k in source_at]
    resolved = {iv.name: [resolve_region(iv.region, pair, batch.layouts[j]) for j, pair in enumerate(pairs)]
                for iv in interventions[:n_regions]}
    aligned: dict[tuple, tuple[Tensor, Tensor]] = {}

    def rows(k: int, i: int, j: int) -> tuple[Tensor, Tensor]:
        iv = interventions[k * n_regions + i]
        key = (iv.site.kind, iv.site.only_last_token, iv.name, j)
        if key not in aligned:
            aligned[key] = patch_indices(iv.site, resolved[iv.name][j], iv.pairing, batch.layouts[j],
                                         source_layouts[j])
        return aligned[key]

    site_of = [interventions[k * n_regions].site for k in range(n_sites)]
    # Clean and source activations at every row any region touches, per (site, pair).
    unions = []
    reads_c, reads_s = [], []
    for k in range(n_sites):
        for j in range(n):
            pieces = [rows(k, i, j) for i in range(n_regions)]
            t_all = torch.unique(torch.cat([t for t, _ in pieces]))
            s_all = torch.unique(torch.cat([s for _, s in pieces]))
            unions.append((t_all, s_all))
            target, src = batch.layouts[j], source_layouts[j]
            site = site_of[k]
            reads_c.append(Read(site, None if site.is_vision else torch.full_like(t_all, target.batch_index), t_all))
            reads_s.append(Read(site, None if site.is_vision else torch.full_like(s_all, src.batch_index), s_all))
    out_s = run(vlm, batch_s, [], reads_s, remote=remote)
    source_values, names = evaluate(metric, out_s.logits[torch.tensor(source_at)], pairs)
    out_c = run(vlm, batch, [], reads_c, remote=remote)
    clean_values, _ = evaluate(metric, out_c.logits, pairs)

    def delta(k: int, i: int, j: int) -> tuple[Tensor, Tensor]:
        """Target rows of point (k, i) on pair j and ``a_src[s] − a[t]`` there (float32)."""
        t, s_rows = rows(k, i, j)
        t_all, s_all = unions[k * n + j]
        a = out_c.reads[k * n + j].float().cpu()[torch.searchsorted(t_all, t)]
        a_src = out_s.reads[k * n + j].float().cpu()[torch.searchsorted(s_all, s_rows)]
        return t, a_src - a

    disjoint = np.ones((n_sites, n_regions, n_regions), dtype=bool)
    if path != "point":
        for k in range(n_sites):
            for j in range(n):
                sets = [set(rows(k, i, j)[0].tolist()) for i in range(n_regions)]
                for i in range(n_regions):
                    for i2 in range(i + 1, n_regions):
                        if sets[i] & sets[i2]:
                            disjoint[k, i, i2] = disjoint[k, i2, i] = False
    groups = _ig_paths(path, n_sites, n_regions, disjoint)
    stacked = repeat_batch(vlm, batch, steps)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    ids, coeffs = metric.weights(pairs)
    ids, coeffs = ids.repeat(steps, 1), coeffs.repeat(steps, 1)
    # Flat vision rows of replica r are shifted by r times the rows of one copy of the batch.
    shift = {"vision_out": sum(lay.grid.n_cells for lay in batch.layouts),
             "vision_block": sum(vlm.adapter.vision_block_rows_per_image(lay.grid, vlm.processor, vlm.config)
                                 for lay in batch.layouts), "lm_resid": 0}
    values = np.zeros((n_sites, n_regions, n), dtype=np.float32)
    for group in groups:
        edits, reads, slots = [], [], []
        by_site: dict[int, list[int]] = {}
        for k, i in group:
            by_site.setdefault(k, []).append(i)
        for k, members in by_site.items():
            site = site_of[k]
            for j in range(n):
                parts = [delta(k, i, j) for i in members]
                t = torch.cat([p[0] for p in parts])
                d = torch.cat([p[1] for p in parts])
                t_all = unions[k * n + j][0]
                a = out_c.reads[k * n + j].float().cpu()[torch.searchsorted(t_all, t)]
                for r in range(steps):
                    written = (a + alphas[r] * d).to(vlm.dtype)
                    if site.is_vision:
                        positions, row_ids = t + r * shift[site.kind], None
                    else:
                        positions = t
                        row_ids = torch.full_like(t, batch.layouts[j].batch_index + r * n)
                    edits.append(Edit.set(site, row_ids, positions, written))
                    reads.append(Read(site, row_ids, positions))
                    slots.append((k, j, r, [len(p[0]) for p in parts], members))
        grads = run_gradients(vlm, stacked, reads, metric.transform, ids, coeffs, edits=edits, remote=remote)
        mean: dict[tuple[int, int], Tensor] = {}
        for q, (k, j, _r, _sizes, _members) in enumerate(slots):
            g = grads.grads[q].float().cpu()
            mean[(k, j)] = mean[(k, j)] + g / steps if (k, j) in mean else g / steps
        for k, members in by_site.items():
            for j in range(n):
                offset = 0
                for i in members:
                    t, d = delta(k, i, j)
                    values[k, i, j] = float((d * mean[(k, j)][offset:offset + len(t)]).sum())
                    offset += len(t)
    return values, (clean_values.numpy(), source_values.numpy(), names), len(groups)


def exact_effects(vlm: VLM, pairs: Sequence[Any], interventions: Sequence[Intervention], metric: TokenReadout, *,
                  batch_size: int = 64, pairs_per_chunk: int = 16, system: Any = DEFAULT_SYSTEM,
                  remote: bool | str = False, out: Path | None = None, config: Mapping[str, Any] | None = None,
                  force: bool = False, progress: bool = False) -> Float[np.ndarray, "points pair"]:
    """Exact ``metric(patched) − metric(clean)`` of each intervention on each pair (the sweep's machinery).

    ``out`` (with the caller's fingerprint ``config``) makes it resumable chunk by chunk.
    """
    pairs = list(pairs)
    chunks = [pairs[s:s + pairs_per_chunk] for s in range(0, len(pairs), pairs_per_chunk)]
    store = _AttributionStore(out, dict(config or {}), force=force) if out is not None else None
    effects = np.zeros((len(interventions), len(pairs)), dtype=np.float32)
    with store if store is not None else contextlib.nullcontext():
        for c, chunk in enumerate(tqdm(chunks, desc="exact check", unit="chunk", disable=not progress)):
            lo = c * pairs_per_chunk
            block = store.load_block(c, 0) if store is not None else None
            if block is None:
                result = run_chunk(vlm, [as_pair(p) for p in chunk], interventions, metric,
                                   per_forward=max(1, batch_size // len(chunk)), system=system, remote=remote)
                block = (result.patched[:, :, 0] - result.clean[None, :, 0]).numpy()
                if store is not None:
                    store.save_block(c, 0, block)
            effects[:, lo:lo + block.shape[1]] = block
    return effects


ACTIVE_SHARE = 0.01
"""A site is *active* in :func:`agreement` when some checked exact effect there reaches this share of the
largest checked exact effect."""


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (as Spearman's coefficient needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return (sums / counts)[inverse]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def correlations(estimate: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman r of two equal-length vectors (NaN under 3 values or with a constant one)."""
    estimate, exact = np.asarray(estimate, dtype=float).ravel(), np.asarray(exact, dtype=float).ravel()
    return {"pearson": _pearson(estimate, exact), "spearman": _pearson(_ranks(estimate), _ranks(exact)),
            "n": int(len(exact))}


def agreement(estimate: LabelledArray, exact: LabelledArray, *, top_k: int | None = None) -> dict[str, Any]:
    """How well estimated effects match exact ones at the points ``exact`` holds (non-NaN).

    Returns JSON-able numbers:

    * ``pearson``, ``spearman``: over every checked (site, region, pair) entry;
    * ``pearson_mean``, ``spearman_mean``: over the checked points' means over pairs;
    * ``top_k_recall``: of the ``top_k`` checked points with the largest mean ``|exact|``, the share that
      are also among the ``top_k`` largest mean ``|estimate|`` (``top_k`` defaults to a tenth of the points);
    * ``by_site`` / ``by_region``: the entry-level correlations within each site / region;
    * ``max_abs_exact``, ``max_abs_estimate``, ``n_points``, ``n_pairs``: the scale and size of the check
      (an all-~0 exact effect makes every correlation meaningless; they are NaN when it is exactly 0);
    * ``active``: the same correlations over the *active* sites only, those where some checked exact
      effect reaches ``ACTIVE_SHARE`` of the largest one (elsewhere every exact effect is ~0 and a
      ranking of estimates there measures noise, e.g. image rows at the last LM slot, which no later
      position reads): ``{"share", "floor", "sites", "inactive_sites", "pearson", "spearman", "n_entries",
      "weakest_site", "weakest_spearman"}``.
    """
    est = estimate.transpose("metric", "site", "region", "pair").values[0].astype(float)
    ex = exact.transpose("metric", "site", "region", "pair").values[0].astype(float)
    if est.shape != ex.shape:
        raise ValueError(f"estimate {est.shape} and exact {ex.shape} differ in shape")
    checked = ~np.isnan(ex).any(-1)
    if not checked.any():
        raise ValueError("exact holds no checked point (all NaN); run attribute(..., check=k) or exact_effects")
    sites, regions = estimate.coords["site"], estimate.coords["region"]
    points = np.argwhere(checked)
    e_pts, x_pts = est[checked], ex[checked]  # (points, pair)
    n_top = max(1, len(points) // 10) if top_k is None else int(top_k)
    if n_top < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    n_top = min(n_top, len(points))
    top_exact = set(np.argsort(-np.abs(x_pts.mean(-1)), kind="mergesort")[:n_top].tolist())
    top_est = set(np.argsort(-np.abs(e_pts.mean(-1)), kind="mergesort")[:n_top].tolist())
    entries = correlations(e_pts, x_pts)
    means = correlations(e_pts.mean(-1), x_pts.mean(-1))
    by_site = {sites[s]: correlations(est[s][checked[s]], ex[s][checked[s]])
               for s in range(len(sites)) if checked[s].any()}
    by_region = {}
    if len(regions) <= 16:  # per-cell breakdowns would be one point each
        by_region = {regions[r]: correlations(est[:, r][checked[:, r]], ex[:, r][checked[:, r]])
                     for r in range(len(regions)) if checked[:, r].any()}
    floor = ACTIVE_SHARE * float(np.abs(x_pts).max())
    live = [s for s in range(len(sites)) if checked[s].any() and floor > 0 and np.abs(ex[s][checked[s]]).max() >= floor]
    live_mask = np.zeros_like(checked)
    live_mask[live] = checked[live]
    live_stats = correlations(est[live_mask], ex[live_mask]) if live else {"pearson": float("nan"),
                                                                          "spearman": float("nan"), "n": 0}
    ranked = [(sites[s], by_site[sites[s]]["spearman"]) for s in live if np.isfinite(by_site[sites[s]]["spearman"])]
    weakest = min(ranked, key=lambda t: t[1], default=(None, float("nan")))
    active = {"share": ACTIVE_SHARE, "floor": floor, "sites": [sites[s] for s in live],
              "inactive_sites": [sites[s] for s in range(len(sites)) if checked[s].any() and s not in live],
              "pearson": live_stats["pearson"], "spearman": live_stats["spearman"], "n_entries": live_stats["n"],
              "weakest_site": weakest[0], "weakest_spearman": weakest[1]}
    return {
        "pearson": entries["pearson"], "spearman": entries["spearman"], "n_entries": entries["n"],
        "pearson_mean": means["pearson"], "spearman_mean": means["spearman"],
        "top_k": n_top, "top_k_recall": len(top_exact & top_est) / n_top,
        "n_points": int(len(points)), "n_pairs": int(est.shape[-1]),
        "max_abs_exact": float(np.abs(x_pts).max()), "max_abs_estimate": float(np.abs(e_pts).max()),
        "by_site": by_site, "by_region": by_region, "active": active,
        "points": [[sites[s], regions[r]] for s, r in points.tolist()],
    }


def validate_attribution(vlm: VLM, pairs: Sequence[Any], result: LabelledArray, sites: Sequence[Site],
                         regions: Mapping[str, RegionSpec] | RegionSpec = None, metric: TokenReadout | None = None,
                         *, pairing: Pairing | Mapping[str, Pairing] = "same", k: int | str = 16, seed: int = 0,
                         top_k: int | None = None, batch_size: int = 64, pairs_per_chunk: int = 16,
                         system: Any = DEFAULT_SYSTEM, remote: bool | str = False) -> dict[str, Any]:
    """Check an existing :func:`attribute` result against exact patching on ``k`` sampled points.

    Give the same ``pairs``, ``sites``, ``regions``, ``metric`` and ``pairing`` the result was computed with;
    returns :func:`agreement` and stores ``result.extras["exact"]``.
    """
    pairs = list(pairs)
    sites = resolve_all(sites)
    first = as_pair(pairs[0])
    metric = _check_metric(metric if metric is not None else default_readout(vlm, [first]))
    regions, pairing, _ = _regions_and_pairing(vlm, first, regions, pairing, sites, system)
    interventions = plan_interventions(sites, regions, pairing)
    want = {"site": [str(s) for s in sites], "region": list(regions), "pair": [pair_name(p) for p in pairs]}
    for axis, labels in want.items():
        if result.coords.get(axis) != labels:
            raise ValueError(f"result's {axis} axis does not match the arguments ({len(result.coords.get(axis, []))} "
                             f"vs {len(labels)} labels); validate with the arguments the result was computed with")
    points = _check_points(k, len(interventions), seed)
    exact = exact_effects(vlm, pairs, [interventions[i] for i in points], metric, batch_size=batch_size,
                          pairs_per_chunk=pairs_per_chunk, system=system, remote=remote)
    n_r = len(regions)
    full = np.full((len(sites), n_r, len(pairs)), np.nan, dtype=np.float32)
    for row, i in enumerate(points):
        full[i // n_r, i % n_r] = exact[row]
    estimate = result.transpose("metric", "site", "region", "pair")
    result.extras["exact"] = LabelledArray(full[None], estimate.axes, estimate.coords)
    stats = agreement(estimate, result.extras["exact"], top_k=top_k)
    result.attrs["agreement"] = stats
    return stats


__all__ = ["ACTIVE_SHARE", "CELLS", "FIXED_METHODS", "METHODS", "PATHS", "agreement", "attention_change", "attribute",
           "cell_regions", "correlations",
           "default_readout", "exact_effects", "validate_attribution"]
