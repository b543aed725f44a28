"""Sweeps: every site × region × pair, batched, saved as it goes, resumable bit for bit.

The work is the Cartesian product as data: ``interventions = sites × regions`` (each one a
:class:`~.patch.Intervention`), applied to chunks of pairs. For one chunk of ``P`` pairs:

* one forward over the chunk's distinct images reads every source row and the clean vision
  embeddings (sources are computed once per source image);
* one forward of the clean batch gives the baseline, its vision embeddings and its residual streams;
* then forwards of the clean batch stacked ``k = batch_size // P`` times, replica ``r`` carrying its
  own (site, region): ``k`` interventions per forward. LM-only sweeps splice the cached clean
  vision embeddings in, so the vision tower never runs per intervention, and (locally) start at the
  forward's patched layer from the cached clean residual: layers below it would recompute exactly
  that residual. Such forwards then hold one slot each (its regions, up to ``k``), since mixing slots
  would only add layers to run.

Each forward's result is written atomically to ``out/chunks/``; a re-run with the same arguments
skips what exists and recomputes the rest exactly as the first run would have (same batches, same
order), so the final array is bit-identical to an uninterrupted run.

Example:
    >>> import spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.geometry import Grid, Region
    >>> from spatial_interp.interventions import Example, PatchPair, sweep
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pairs = [PatchPair(Example(Image.new("RGB", (336, 336), c), "The color of the square is "),
    ...                    Example(Image.new("RGB", (336, 336), "blue"), "The color of the square is "),
    ...                    answers=("red", "blue")) for c in ("red", "green")]
    >>> grid = Grid(12, 12)
    >>> result = sweep(vlm, pairs, [si.site.lm_resid(s) for s in range(4)],
    ...                {"left": Region.columns(grid, 0, 4), "all": None}, progress=False)
    >>> result.axes, result.shape
    (('metric', 'site', 'region', 'pair'), (2, 4, 2, 2))
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..models.vlm import DEFAULT_SYSTEM, VLM
from ..results import LabelledArray, provenance, write_json, write_npz
from ..site import Site
from .ablate import Ablation
from .examples import RegionSpec, as_pair, pair_name
from .metrics import Metric, default_metric
from .patch import Intervention, Pairing, PreparedChunk, check_pairing, group_forwards, reuses_prefix

log = logging.getLogger(__name__)


class SweepMismatchError(ValueError):
    """``out`` already holds a different sweep (other model, sites, regions, pairs or batching)."""


def plan_interventions(sites: Sequence[Site], regions: Mapping[str, RegionSpec],
                       pairing: Pairing | Mapping[str, Pairing]) -> list[Intervention]:
    """Sites × regions in site-major order, each region with its pairing."""
    if isinstance(pairing, str):
        check_pairing(pairing)
        pairing = dict.fromkeys(regions, pairing)
    missing = set(regions) - set(pairing)
    if missing:
        raise ValueError(f"no pairing given for regions {sorted(missing)}; pass pairing={{name: 'same'|'swap'}}")
    return [Intervention(site, spec, name, pairing[name]) for site in sites for name, spec in regions.items()]


def _fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sweep(
    vlm: VLM,
    pairs: Sequence[Any],
    sites: Sequence[Site],
    regions: Mapping[str, RegionSpec] | RegionSpec = None,
    metric: Metric | None = None,
    *,
    pairing: Pairing | Mapping[str, Pairing] = "same",
    out: str | Path | None = None,
    pairs_per_chunk: int = 16,
    batch_size: int = 64,
    ablation: Ablation | None = None,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    progress: bool = True,
    reuse_prefix: bool | None = None,
    seed: int | None = None,
) -> LabelledArray:
    """Patch every (site, region) into every pair; returns a ``(metric, site, region, pair)`` array.

    Args:
        pairs: :class:`~.examples.PatchPair` objects (or ``data`` pairs, ``(clean, source)`` tuples).
        sites: e.g. ``[si.site.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]``.
        regions: ``{name: region spec}`` (a Region, a Swap, a function of (pair, layout), or None
            for all cells); a single spec is named ``"region"``.
        metric: callback on final-position logits (default: 4-variant answer probabilities).
        pairing: ``"same"``/``"swap"``, or one per region name (e.g. criss-cross object and strip).
        out: folder for incremental results; re-running with the same arguments resumes there. The
            resume check compares model, sites, region *names*, pairings, pair names and batching; a
            region function changed under the same name is not detected, so use a new folder.
        pairs_per_chunk: pairs whose sources are computed together (one forward of their images).
        batch_size: rows per patched forward; ``batch_size // pairs_per_chunk`` interventions share one.
        ablation: ablate clean and source runs first (§7.2).
        remote: ``False``, ``True`` (NDIF) or ``"local"``.
        progress: show a progress bar with ETA (tqdm).
        reuse_prefix: start each patched forward at its lowest patched layer from the cached clean
            residual (exact; default on locally, off remotely where it would ship residual streams).

    Returns:
        The patched metric; ``extras["clean"]``/``extras["source"]`` hold ``(metric, pair)`` baselines.
    """
    # Pairs are converted (and data pairs rendered) one chunk at a time, so memory follows the chunk.
    pairs = list(pairs)
    if not pairs:
        raise ValueError("sweep() needs at least one pair")
    pair_names = [pair_name(p) for p in pairs]
    sites = list(sites)
    if not sites:
        raise ValueError("sweep() needs at least one site")
    for site in sites:
        vlm.check_site(site)
    if not isinstance(regions, Mapping):
        regions = {"region": regions}
    if pairs_per_chunk < 1 or batch_size < 1:
        raise ValueError(f"pairs_per_chunk and batch_size must be >= 1, got {pairs_per_chunk}, {batch_size}")
    interventions = plan_interventions(sites, regions, pairing)
    metric = metric if metric is not None else default_metric(vlm, [as_pair(pairs[0])])
    per_forward = max(1, batch_size // min(pairs_per_chunk, len(pairs)))
    chunks = [pairs[s:s + pairs_per_chunk] for s in range(0, len(pairs), pairs_per_chunk)]

    config = {
        "primitive": "sweep", "model": vlm.info.name, "revision": vlm.info.revision, "dtype": str(vlm.dtype),
        "sites": [str(s) for s in sites], "regions": list(regions),
        "pairing": {iv.name: iv.pairing for iv in interventions[: len(regions)]},
        "pairs": pair_names, "pairs_per_chunk": pairs_per_chunk, "batch_size": batch_size,
        "ablation": ablation is not None, "metric": type(metric).__name__,
    }
    store = _Store(Path(out), config) if out is not None else None

    patched: dict[tuple[int, int], np.ndarray] = {}
    baselines: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    names: list[str] | None = None
    # Every chunk runs the same forwards (one per group), so the plan and progress total are known up front.
    split = reuses_prefix(interventions, remote=remote, reuse_prefix=reuse_prefix, ablation=ablation)
    groups_of = [group_forwards(interventions, per_forward, split_sites=split)] * len(chunks)
    total = sum(len(groups) + 1 for groups in groups_of)
    bar = tqdm(total=total, desc="sweep", unit="fwd", disable=not progress, dynamic_ncols=True)
    try:
        for c, chunk in enumerate(chunks):
            groups = groups_of[c]
            done = store.load_chunk(c, len(groups)) if store is not None else None
            if done is not None:
                baselines[c], blocks, names = done
                for g, values in enumerate(blocks):
                    patched[(c, g)] = values
                bar.update(len(groups) + 1)
                continue
            prepared = PreparedChunk(vlm, [as_pair(p) for p in chunk], interventions, metric, per_forward=per_forward,
                                     ablation=ablation, system=system, remote=remote, reuse_prefix=reuse_prefix)
            names = prepared.names
            baselines[c] = (prepared.clean.numpy(), prepared.source.numpy())
            if store is not None:
                store.save_base(c, *baselines[c], names)
            bar.update(1)
            for g, chosen in enumerate(groups):
                cached = store.load_block(c, g) if store is not None else None
                if cached is None:
                    cached = prepared.run(chosen).numpy()
                    if store is not None:
                        store.save_block(c, g, cached)
                patched[(c, g)] = cached
                bar.update(1)
    finally:
        bar.close()

    # (intervention, pair, metric) → (metric, site, region, pair)
    n_m = len(names)
    values = np.zeros((len(interventions), len(pairs), n_m), dtype=np.float32)
    for c, groups in enumerate(groups_of):
        lo = c * pairs_per_chunk
        for g, chosen in enumerate(groups):
            block = patched[(c, g)]
            for r, i in enumerate(chosen):
                values[i, lo:lo + block.shape[1]] = block[r]
    values = values.reshape(len(sites), len(regions), len(pairs), n_m).transpose(3, 0, 1, 2)
    coords = {"metric": names, "site": [str(s) for s in sites], "region": list(regions),
              "pair": pair_names}
    result = LabelledArray(values, ("metric", "site", "region", "pair"), coords,
                           attrs={"pairing": config["pairing"]},
                           provenance=provenance(vlm, seed=seed, config=config))
    clean = np.concatenate([baselines[c][0] for c in range(len(chunks))]).T
    source = np.concatenate([baselines[c][1] for c in range(len(chunks))]).T
    base_coords = {"metric": names, "pair": coords["pair"]}
    result.extras["clean"] = LabelledArray(clean, ("metric", "pair"), base_coords)
    result.extras["source"] = LabelledArray(source, ("metric", "pair"), base_coords)
    if store is not None:
        result.save(store.root / "result")
    return result


class _Store:
    """The on-disk progress of one sweep: a manifest plus one file per finished forward."""

    def __init__(self, root: Path, config: Mapping[str, Any]) -> None:
        self.root = root
        self.chunks = root / "chunks"
        key = _fingerprint(config)
        manifest = root / "sweep.json"
        if manifest.is_file():
            existing = json.loads(manifest.read_text())
            if existing.get("fingerprint") != key:
                changed = sorted(k for k in config if existing.get("config", {}).get(k) != json.loads(
                    json.dumps(config[k], default=str)))
                raise SweepMismatchError(
                    f"{root} holds a different sweep (differs in: {', '.join(changed) or 'details'}); "
                    "pass a new out= folder, or delete that one to start over")
            log.info("resuming sweep in %s", root)
        else:
            write_json(manifest, {"fingerprint": key, "config": config})
        self.chunks.mkdir(parents=True, exist_ok=True)

    def _base(self, c: int) -> Path:
        return self.chunks / f"c{c:05d}_base.npz"

    def _block(self, c: int, g: int) -> Path:
        return self.chunks / f"c{c:05d}_f{g:05d}.npz"

    def save_base(self, c: int, clean: np.ndarray, source: np.ndarray, names: list[str]) -> None:
        write_npz(self._base(c), {"clean": clean, "source": source, "names": np.array(names)})

    def save_block(self, c: int, g: int, values: np.ndarray) -> None:
        write_npz(self._block(c, g), {"values": values})

    def load_block(self, c: int, g: int) -> np.ndarray | None:
        path = self._block(c, g)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return data["values"]

    def load_chunk(self, c: int, n_blocks: int) -> tuple | None:
        """Everything of chunk ``c`` if it is complete, else ``None``."""
        if not self._base(c).is_file() or not all(self._block(c, g).is_file() for g in range(n_blocks)):
            return None
        with np.load(self._base(c)) as data:
            base = (data["clean"], data["source"])
            names = [str(n) for n in data["names"]]
        return base, [self.load_block(c, g) for g in range(n_blocks)], names


__all__ = ["SweepMismatchError", "plan_interventions", "sweep"]
