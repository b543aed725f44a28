"""Interchange interventions: activations of a source run written into a clean run.

``pairing="same"`` copies cell i of the source into cell i of the clean run; ``pairing="swap"``
trades two regions (§6 criss-cross): clean[A_i] ← source[B_i] and clean[B_i] ← source[A_i].
Works at any vision block, ``vision_out`` or ``lm_resid(s)`` (and ``.last_token``, §5).

How a chunk of pairs runs (shared with :func:`~.sweep.sweep`; see :class:`PreparedChunk`):

1. one forward over the chunk's distinct source images reads every source row any intervention
   needs, and the source baseline;
2. one forward of the clean batch gives the clean baseline, its vision embeddings and (locally)
   its residual streams;
3. patched forwards of the clean batch stacked ``k`` times along the batch axis, replica ``r``
   carrying intervention ``r`` (its own site and region), so ``k`` interventions share one forward.
   When all of them are at LM sites the clean vision embeddings are spliced in directly (the vision
   tower does not run again), and a forward patching slot ``s`` starts from the clean ``lm_resid(s)``
   instead of recomputing layers ``0 … s-1`` (nnsight ``skip``; exact, as nothing below is edited).

Example:
    >>> import spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.geometry import Grid, Region
    >>> from spatial_interp.interventions import Example, PatchPair, patch
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pair = PatchPair(Example(Image.new("RGB", (336, 336), "red"), "The color of the square is "),
    ...                  Example(Image.new("RGB", (336, 336), "blue"), "The color of the square is "),
    ...                  answers=("red", "blue"), answer_names=("clean answer", "cf answer"))
    >>> result = patch(vlm, [pair], si.site.lm_resid(1), Region.columns(Grid(12, 12), 0, 4))
    >>> result.axes, result.coords["metric"]
    (('pair', 'metric'), ['clean answer', 'cf answer'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry import GeometryError, ImageLayout, Region
from ..models.vlm import DEFAULT_SYSTEM, VLM, Batch
from ..results import LabelledArray, provenance
from ..site import Site, lm_resid, resolve
from .ablate import Ablation, ReferenceCache
from .engine import Edit, Read, repeat_batch, run, vision_feature_reads
from .examples import Example, PatchPair, RegionSpec, Swap, as_pair, pair_name, resolve_region
from .metrics import Metric, default_metric, evaluate, raw_logits

Pairing = Literal["same", "swap"]


@dataclass(frozen=True)
class Intervention:
    """One (site, region, pairing) patch applied to every pair; ``name`` labels the region in results."""

    site: Site
    region: RegionSpec = None
    name: str = "all"
    pairing: Pairing = "same"

    def __post_init__(self) -> None:
        # Strings ("lm_resid.3") are accepted like collect() accepts them, so patch and sweep agree.
        object.__setattr__(self, "site", resolve(self.site))
        check_pairing(self.pairing)


@dataclass
class ChunkResult:
    patched: Float[Tensor, "interventions pairs m"]
    clean: Float[Tensor, "pairs m"]
    source: Float[Tensor, "pairs m"]
    names: list[str]


def check_batch_size(batch_size: int, name: str = "batch_size") -> None:
    """A positive int, or a clear error (0 would loop forever or fail deep inside ``range``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"{name} must be an int >= 1, got {batch_size!r} ({type(batch_size).__name__})")
    if batch_size < 1:
        raise ValueError(f"{name} must be >= 1, got {batch_size}")


def check_pairing(pairing: str) -> None:
    if pairing not in ("same", "swap"):
        raise ValueError(f"pairing must be 'same' (cell i ← cell i) or 'swap' (region A ↔ region B), got {pairing!r}")


def patch_indices(site: Site, region: Region | Swap, pairing: Pairing, target: ImageLayout,
                  source: ImageLayout) -> tuple[Tensor, Tensor]:
    """Target positions/rows in the clean run and the source positions/rows they take, aligned."""
    if site.only_last_token:
        return target.indices(None, site), source.indices(None, site)
    if pairing == "same":
        if isinstance(region, Swap):
            raise ValueError("a Swap region needs pairing='swap'")
        t, s = target.indices(region, site), source.indices(region, site)
    else:
        if not isinstance(region, Swap):
            raise ValueError("pairing='swap' needs a Swap(a, b) (or an (A, B) tuple) as the region")
        t = torch.cat([target.indices(region.a, site), target.indices(region.b, site)])
        s = torch.cat([source.indices(region.b, site), source.indices(region.a, site)])
    if t.shape != s.shape:
        raise GeometryError(f"clean and source images give {t.numel()} vs {s.numel()} rows at {site}: "
                            "they must have the same grid (same image size) to be patched cell by cell")
    return t, s


def _unique(examples: Sequence[Example]) -> tuple[list[Example], list[int]]:
    """Distinct examples (by content) and, for each input, its index among them."""
    index: dict[str, int] = {}
    unique, where = [], []
    for example in examples:
        if example.key not in index:
            index[example.key] = len(unique)
            unique.append(example)
        where.append(index[example.key])
    return unique, where


@dataclass
class ChunkInputs:
    """A chunk's host-side work, done before any forward: pairs converted (data pairs rendered), their
    distinct source images, and both processor batches. Building it is what
    :func:`~spatial_interp.prefetch.prefetched` overlaps with the previous chunk's forwards."""

    pairs: list[PatchPair]
    sources: list[Example]
    source_at: list[int]
    batch_a: Batch
    batch: Batch


def chunk_inputs(vlm: VLM, pairs: Sequence[Any], system: Any = DEFAULT_SYSTEM) -> ChunkInputs:
    """:class:`ChunkInputs` of ``pairs`` (anything :func:`~.examples.as_pair` takes)."""
    pairs = [as_pair(p) for p in pairs]
    sources, source_at = _unique([p.source for p in pairs])
    batch_a = vlm.prepare([e.image for e in sources], [e.prompt for e in sources], system=system)
    batch = vlm.prepare([p.clean.image for p in pairs], [p.clean.prompt for p in pairs], system=system)
    return ChunkInputs(pairs, sources, source_at, batch_a, batch)


class PreparedChunk:
    """A chunk of pairs after the unpatched forwards; :meth:`run` does one patched forward.

    On creation it runs (1) the distinct source images once, reading every source row any
    intervention needs, and (2) the clean batch once, giving the clean baseline, the clean vision
    embeddings and the clean residual streams that patched forwards start from. Any subset of the
    interventions can then run in any order (a sweep resumes this way).

    Args:
        per_forward: interventions stacked per patched forward (decides which residuals to keep).
        reuse_prefix: start each LM forward at its lowest patched layer from the clean residual
            instead of recomputing the unpatched layers below it (exact: those layers see no edit).
            Off by default when ``remote`` is set, since it ships whole residual streams.
        reference_cache: the ablation's reference activations, shared with other calls of the run
            (each distinct reference is computed once; see :class:`~.ablate.ReferenceCache`).
        inputs: the chunk's :func:`chunk_inputs`, if already built (e.g. prefetched); ``pairs`` are then
            taken from it.
    """

    def __init__(
        self,
        vlm: VLM,
        pairs: Sequence[PatchPair],
        interventions: Sequence[Intervention],
        metric: Metric,
        *,
        per_forward: int = 1,
        ablation: Ablation | None = None,
        system: Any = DEFAULT_SYSTEM,
        remote: bool | str = False,
        feed_vision: bool = True,
        reuse_prefix: bool | None = None,
        reference_cache: ReferenceCache | None = None,
        inputs: ChunkInputs | None = None,
    ) -> None:
        for iv in interventions:
            vlm.check_site(iv.site)
        inputs = inputs if inputs is not None else chunk_inputs(vlm, pairs, system)
        pairs = inputs.pairs
        self.vlm, self.pairs, self.interventions = vlm, list(pairs), list(interventions)
        self.metric, self.ablation = metric, ablation
        self.system, self.remote = system, remote
        reuse = reuses_prefix(self.interventions, remote=remote, reuse_prefix=reuse_prefix, ablation=ablation,
                              feed_vision=feed_vision)
        self.groups = group_forwards(self.interventions, per_forward, split_sites=reuse)
        n = len(pairs)
        sources, self.source_at, batch_a, self.batch = inputs.sources, inputs.source_at, inputs.batch_a, inputs.batch
        self.source_layouts = [batch_a.layouts[k] for k in self.source_at]

        if ablation is not None:
            values = ablation.compute(vlm, sources + [p.clean for p in pairs], batch_a.layouts + self.batch.layouts,
                                      system=system, remote=remote, batch_size=max(len(sources), 1),
                                      cache=reference_cache)
            source_ablation, self.clean_ablation = values[:len(sources)], values[len(sources):]

        # Regions are resolved once per (intervention, pair), on the clean image's grid.
        self.regions = [[resolve_region(iv.region, pair, self.batch.layouts[j]) for j, pair in enumerate(pairs)]
                        for iv in interventions]

        # (1) sources: every row any intervention takes from them.
        reads: list[Read] = []
        for i, iv in enumerate(interventions):
            for j in range(n):
                src = self.source_layouts[j]
                _, s = patch_indices(iv.site, self.regions[i][j], iv.pairing, self.batch.layouts[j], src)
                reads.append(Read(iv.site, None if iv.site.is_vision else torch.full_like(s, src.batch_index), s))
        edits_a = ablation.edits(source_ablation, batch_a.layouts) if ablation is not None else []
        out_a = run(vlm, batch_a, edits_a, reads, remote=remote)
        self.source, self.names = evaluate(metric, out_a.logits[torch.tensor(self.source_at)], pairs)
        # Kept off the accelerator: a whole sweep's source rows can outweigh one forward's activations.
        self.source_rows = [rows.cpu() for rows in out_a.reads]

        # (2) the clean batch: baseline, vision embeddings, residuals at each forward's lowest site.
        lm_only = all(not iv.site.is_vision for iv in interventions)
        self.feed = feed_vision and lm_only and (ablation is None or not ablation.site.is_vision)
        floor = ablation.site.index if ablation is not None and not ablation.site.is_vision else 0
        starts = sorted({self._start(group) for group in self.groups} - {0}) if reuse and self.feed else []
        starts = [m for m in starts if m > floor]
        seq = self.batch.seq_len
        rows = torch.arange(n).repeat_interleave(seq)
        positions = torch.arange(seq).repeat(n)
        reads_c = [Read(lm_resid(m), rows, positions) for m in starts]
        if self.feed:
            reads_c += vision_feature_reads(self.batch.layouts)
        edits_c = ablation.edits(self.clean_ablation, self.batch.layouts) if ablation is not None else []
        out_c = run(vlm, self.batch, edits_c, reads_c, remote=remote)
        self.clean, _ = evaluate(metric, out_c.logits, pairs)
        self.prefixes = {m: out_c.reads[k].reshape(n, seq, -1).cpu() for k, m in enumerate(starts)}
        self.features = out_c.reads[-1] if self.feed else None

    def _start(self, chosen: Sequence[int]) -> int:
        """Lowest LM residual slot patched in a forward (0 when it includes a vision site)."""
        sites = [self.interventions[i].site for i in chosen]
        return 0 if any(s.is_vision for s in sites) else min(s.index for s in sites)

    def forwards(self, per_forward: int | None = None) -> list[list[int]]:
        return self.groups if per_forward is None else group_forwards(self.interventions, per_forward,
                                                                      split_sites=bool(self.prefixes))

    def run(self, chosen: Sequence[int]) -> Float[Tensor, "k pairs m"]:
        """One forward: the clean batch stacked ``len(chosen)`` times, replica ``r`` patched by
        intervention ``chosen[r]``. Returns the metric per replica and pair."""
        vlm, n, k = self.vlm, len(self.pairs), len(chosen)
        vision = {self.interventions[i].site.is_vision for i in chosen}
        if len(vision) != 1:
            raise ValueError("vision and LM interventions cannot share a forward; group them with forwards()")
        batch = repeat_batch(vlm, self.batch, k)
        start = self._start(chosen)
        prefix = None
        edits: list[Edit] = []
        if start in self.prefixes:
            # The clean residual already carries the ablation, and no layer below `start` is run.
            prefix = (start, torch.cat([self.prefixes[start]] * k))
        elif self.ablation is not None:
            edits += self.ablation.edits(self.clean_ablation * k, batch.layouts)
        for r, i in enumerate(chosen):
            site, pairing = self.interventions[i].site, self.interventions[i].pairing
            for j in range(n):
                target = batch.layouts[r * n + j]
                t, _ = patch_indices(site, self.regions[i][j], pairing, target, self.source_layouts[j])
                rows = None if site.is_vision else torch.full_like(t, target.batch_index)
                edits.append(Edit.set(site, rows, t, self.source_rows[i * n + j]))
        fed = self.features is not None and not vision.pop()
        out = run(vlm, batch, edits, vision_features=torch.cat([self.features] * k) if fed else None,
                  prefix=prefix, remote=self.remote)
        return torch.stack([evaluate(self.metric, out.logits[r * n:(r + 1) * n], self.pairs)[0]
                            for r in range(k)])


def group_forwards(interventions: Sequence[Intervention], per_forward: int, *,
                   split_sites: bool = False) -> list[list[int]]:
    """Intervention indices grouped into forwards of at most ``per_forward``, in order.

    Vision and LM interventions never share a forward (LM ones run on cached vision embeddings).
    ``split_sites`` also keeps different LM slots apart: a forward that starts from the cached clean
    residual must run every layer above its lowest slot, so mixing slots only adds work.
    """
    groups = []
    for vision in (False, True):
        members = [i for i, iv in enumerate(interventions) if iv.site.is_vision == vision]
        runs: list[list[int]] = []
        for i in members:
            key = interventions[i].site.index if split_sites and not vision else None
            if runs and (key is None or interventions[runs[-1][0]].site.index == key):
                runs[-1].append(i)
            else:
                runs.append([i])
        for run_ in runs:
            groups += [run_[s:s + per_forward] for s in range(0, len(run_), per_forward)]
    return groups


def reuses_prefix(interventions: Sequence[Intervention], *, remote: bool | str = False,
                  reuse_prefix: bool | None = None, ablation: Ablation | None = None,
                  feed_vision: bool = True) -> bool:
    """Whether patched forwards start from cached clean residuals (LM-only work; local unless forced)."""
    lm_only = all(not iv.site.is_vision for iv in interventions)
    feed = feed_vision and lm_only and (ablation is None or not ablation.site.is_vision)
    return feed and ((not remote) if reuse_prefix is None else bool(reuse_prefix))


def run_chunk(vlm: VLM, pairs: Sequence[PatchPair], interventions: Sequence[Intervention], metric: Metric, *,
              per_forward: int, **options: Any) -> ChunkResult:
    """Every intervention on every pair of one chunk (step 1 once, then step-2 forwards)."""
    chunk = PreparedChunk(vlm, pairs, interventions, metric, per_forward=per_forward, **options)
    patched: list[Tensor | None] = [None] * len(interventions)
    for chosen in chunk.forwards():
        for i, values in zip(chosen, chunk.run(chosen), strict=True):
            patched[i] = values
    return ChunkResult(torch.stack(patched), chunk.clean, chunk.source, chunk.names)


def patch(
    vlm: VLM,
    pairs: Sequence[Any],
    site: Site,
    region: RegionSpec = None,
    pairing: Pairing = "same",
    metric: Metric | None = None,
    *,
    batch_size: int = 16,
    ablation: Ablation | None = None,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    reference_cache: ReferenceCache | None = None,
) -> LabelledArray:
    """Patch ``site`` × ``region`` from each pair's source run into its clean run.

    Args:
        pairs: :class:`PatchPair` objects (or ``data`` pairs / ``(clean, source)`` tuples).
        site: where to patch; ``lm_resid(s).last_token`` patches the final position (§5).
        region: a Region (``pairing="same"``), a :class:`Swap` or ``(A, B)`` (``pairing="swap"``), a
            function ``(pair, layout) -> Region | Swap``, or ``None`` for every cell.
        metric: callback on final-position logits (default: the 4-variant answer probabilities).
        batch_size: pairs per forward.
        ablation: ablate both runs first (§7.2), at ``ablation.site``.
        remote: ``False``, ``True`` (NDIF) or ``"local"`` (nnsight's serialisation round trip).
        reference_cache: the ablation's references shared across calls (:class:`~.ablate.ReferenceCache`).

    Returns:
        ``(pair, metric)`` array; ``extras["clean"]`` and ``extras["source"]`` hold the unpatched runs.
    """
    site = resolve(site)
    pairs = list(pairs)  # converted (data pairs rendered) one batch at a time
    if not pairs:
        raise ValueError("patch() needs at least one pair")
    check_batch_size(batch_size)
    metric = metric if metric is not None else default_metric(vlm, [as_pair(pairs[0])])
    check_pairing(pairing)
    intervention = Intervention(site, region, pairing=pairing)
    chunks = [run_chunk(vlm, [as_pair(p) for p in pairs[s:s + batch_size]], [intervention], metric, per_forward=1,
                        ablation=ablation, system=system, remote=remote, reference_cache=reference_cache)
              for s in range(0, len(pairs), batch_size)]
    names = chunks[0].names
    coords = {"pair": [pair_name(p) for p in pairs], "metric": names}
    config = {"primitive": "patch", "site": str(site), "pairing": pairing, "batch_size": batch_size,
              "ablation": ablation is not None}
    result = LabelledArray(torch.cat([c.patched[0] for c in chunks]).numpy(), ("pair", "metric"), coords,
                           attrs={"site": str(site), "pairing": pairing}, provenance=provenance(vlm, config=config))
    result.extras["clean"] = LabelledArray(torch.cat([c.clean for c in chunks]).numpy(), ("pair", "metric"), coords)
    result.extras["source"] = LabelledArray(torch.cat([c.source for c in chunks]).numpy(), ("pair", "metric"),
                                            coords)
    return result


def patch_logits(
    vlm: VLM,
    pairs: Sequence[Any],
    site: Site,
    region: RegionSpec = None,
    pairing: Pairing = "same",
    *,
    batch_size: int = 16,
    ablation: Ablation | None = None,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
) -> Float[Tensor, "pair vocab"]:
    """Final-position logits of each patched clean run (same arguments as :func:`patch`)."""
    site = resolve(site)
    pairs = [as_pair(p) for p in pairs]
    if not pairs:
        raise ValueError("patch_logits() needs at least one pair")
    check_batch_size(batch_size)
    return torch.cat([
        run_chunk(vlm, pairs[s:s + batch_size], [Intervention(site, region, pairing=pairing)], raw_logits(),
                  per_forward=1, ablation=ablation, system=system, remote=remote).patched[0]
        for s in range(0, len(pairs), batch_size)
    ])
