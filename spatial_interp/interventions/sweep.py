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

Resuming is only safe if "the same arguments" means the same *contents*, so ``out/sweep.json``
records a fingerprint of everything that decides the numbers (see :func:`sweep_identity`): the
model and a hash of its weights, sites, each region's cells (or a region function's code and the
values it closes over), pairings, every pair's pixels, prompts and answers, batching, the metric
and its parameters, the ablation, the system text and the seed. A different fingerprint raises
:class:`SweepMismatchError` before any forward. Each chunk file carries that fingerprint, its own
name and a sha256 of its arrays, so a truncated, corrupted, moved or foreign chunk is logged and
recomputed, never trusted. ``out/.lock`` (an ``fcntl.flock``) keeps a second writer out while a
sweep runs.

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

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.vlm import DEFAULT_SYSTEM, VLM
from ..prefetch import prefetched
from ..progress import progress_bar
from ..results import LabelledArray, folder_lock, provenance, remove_stale_temps, write_json, write_npz
from ..site import Site, resolve_all
from .ablate import Ablation, ReferenceCache
from .examples import RegionSpec, as_pair, pair_name
from .fingerprint import bytes_digest, content_key, pairs_digest, region_key, weights_key
from .metrics import Metric, default_metric
from .patch import (
    ChunkInputs,
    Intervention,
    Pairing,
    PreparedChunk,
    check_pairing,
    chunk_inputs,
    group_forwards,
    reuses_prefix,
)

log = logging.getLogger(__name__)


class SweepMismatchError(ValueError):
    """``out`` already holds a different sweep (or files of an unknown one); resuming would mix results."""


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
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:32]


def sweep_identity(vlm: VLM, pairs: Sequence[Any], regions: Mapping[str, RegionSpec], metric: Any,
                   ablation: Ablation | None, system: Any, seed: int | None) -> dict[str, Any]:
    """The fingerprint fields beyond names: contents of pairs, regions, metric and ablation; weights; seed.

    Computed only for sweeps with ``out=`` (it renders every data pair once more).
    """
    return {
        "model_source": vlm.info.source, "model_extra": content_key(dict(vlm.info.extra)),
        "weights": weights_key(vlm),
        "region_contents": {name: bytes_digest(json.dumps(region_key(spec), sort_keys=True))
                            for name, spec in regions.items()},
        "pairs_content": pairs_digest(pairs),
        "metric_params": content_key(metric),
        "ablation_spec": None if ablation is None else content_key(ablation),
        "system": "default" if system is DEFAULT_SYSTEM else content_key(system),
        "seed": seed,
    }


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Fields (and, for per-region fields, region names) whose values differ."""
    changed = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key), json.loads(json.dumps(new.get(key), default=str))
        if was == now:
            continue
        if key == "region_contents" and isinstance(was, dict) and isinstance(now, dict):
            names = sorted(n for n in set(was) | set(now) if was.get(n) != now.get(n))
            changed.append(f"{key} ({', '.join(map(repr, names))})")
        else:
            changed.append(key)
    return changed


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
    force: bool = False,
    reference_cache: ReferenceCache | None = None,
    prefetch: bool = True,
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
            resume check compares contents, not names (model weights or revision, sites, region cells
            or region-function code and closure values, pairs' pixels/prompts/answers, batching,
            metric parameters, ablation, system text, seed; see :func:`sweep_identity` and
            :func:`content_key` for what a callable is keyed by), and raises
            :class:`SweepMismatchError` naming what differs before running anything. The folder is
            locked while the sweep runs; a second writer fails at once.
        pairs_per_chunk: pairs whose sources are computed together (one forward of their images).
        batch_size: rows per patched forward; ``batch_size // pairs_per_chunk`` interventions share one.
        ablation: ablate clean and source runs first (§7.2).
        remote: ``False``, ``True`` (NDIF) or ``"local"``.
        progress: show a progress bar with ETA (tqdm).
        reuse_prefix: start each patched forward at its lowest patched layer from the cached clean
            residual (exact; default on locally, off remotely where it would ship residual streams).
        seed: recorded in the provenance and the fingerprint.
        force: with ``out``, discard whatever the folder holds (chunks, manifest and result, even of this
            very sweep) and start over, instead of resuming or raising :class:`SweepMismatchError`.
        reference_cache: the ablation's reference activations shared with the run's other calls (e.g.
            the pair filter under the same ablation), so each distinct reference is computed once;
            content-keyed, so it is not part of the resume fingerprint.
        prefetch: render and process the next chunk's pairs in a worker thread while this chunk's
            forwards run (:mod:`spatial_interp.prefetch`; same order, same numbers).

    Returns:
        The patched metric; ``extras["clean"]``/``extras["source"]`` hold ``(metric, pair)`` baselines.
    """
    # Pairs are converted (and data pairs rendered) one chunk at a time, so memory follows the chunk.
    pairs = list(pairs)
    if not pairs:
        raise ValueError("sweep() needs at least one pair")
    pair_names = [pair_name(p) for p in pairs]
    sites = resolve_all(sites)
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
    if out is not None:
        # Everything is keyed before the first forward, so a mismatch costs no compute.
        config.update(sweep_identity(vlm, pairs, regions, metric, ablation, system, seed))
    store = _Store(Path(out), config, force=force) if out is not None else None

    patched: dict[tuple[int, int], np.ndarray] = {}
    baselines: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    names: list[str] | None = None
    # Every chunk runs the same forwards (one per group), so the plan and progress total are known up front.
    split = reuses_prefix(interventions, remote=remote, reuse_prefix=reuse_prefix, ablation=ablation)
    groups_of = [group_forwards(interventions, per_forward, split_sites=split)] * len(chunks)
    total = sum(len(groups) + 1 for groups in groups_of)
    with store if store is not None else contextlib.nullcontext():
        bar = progress_bar(total=total, desc="sweep", unit="fwd", disable=not progress)
        def stored_or_inputs() -> Iterator[tuple[int, Any, list[np.ndarray | None], ChunkInputs | None]]:
            # What each chunk already has on disk, and the host work (rendering, processor) for the rest.
            for c, chunk in enumerate(chunks):
                base = store.load_base(c) if store is not None else None
                blocks = [store.load_block(c, g) if store is not None else None for g in range(len(groups_of[c]))]
                done = base is not None and all(b is not None for b in blocks)
                yield c, base, blocks, None if done else chunk_inputs(vlm, chunk, system)

        try:
            # The next chunk's inputs are built in a worker thread during this chunk's forwards.
            for c, base, blocks, inputs in prefetched(stored_or_inputs(), enabled=prefetch):
                groups = groups_of[c]
                if inputs is None:
                    baselines[c], names = base[:2], base[2]
                    for g, values in enumerate(blocks):
                        patched[(c, g)] = values
                    bar.update(len(groups) + 1)
                    continue
                prepared = PreparedChunk(vlm, inputs.pairs, interventions, metric, inputs=inputs,
                                         per_forward=per_forward, ablation=ablation, system=system, remote=remote,
                                         reuse_prefix=reuse_prefix, reference_cache=reference_cache)
                del inputs
                names = prepared.names
                baselines[c] = (prepared.clean.numpy(), prepared.source.numpy())
                if store is not None and base is None:
                    store.save_base(c, *baselines[c], names)
                bar.update(1)
                for g, chosen in enumerate(groups):
                    cached = blocks[g]
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
    """The on-disk progress of one sweep: a manifest plus one self-checking file per finished forward.

    Opening it takes the folder's lock (held until :meth:`close` / the end of the ``with`` block),
    removes temporary files a killed writer left, and checks the manifest against this sweep's
    fingerprint. Every chunk file holds, next to its arrays, that fingerprint, its own file stem and a
    sha256 of its arrays; one that is unreadable or fails any of the three is logged and recomputed.
    """

    MANIFEST = "sweep.json"
    RESULT = ("result.json", "result.npz")

    def __init__(self, root: Path, config: Mapping[str, Any], *, force: bool = False) -> None:
        self.root = root
        self.chunks = root / "chunks"
        self.key = _fingerprint(config)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(folder_lock(root, "sweep"))
        try:
            self._open(config, force)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder's lock."""
        self._stack.close()

    def _open(self, config: Mapping[str, Any], force: bool) -> None:
        for folder in (self.root, self.chunks):
            remove_stale_temps(folder)
        manifest = self.root / self.MANIFEST
        how = "pass a new out= folder, or force=True to discard it and start over"
        if manifest.is_file():
            try:
                existing = json.loads(manifest.read_text())
                if not isinstance(existing, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as error:
                if not force:
                    raise SweepMismatchError(f"{manifest} cannot be read ({error}), so what {self.root} holds cannot "
                                             f"be checked; {how}") from None
                existing = None
            if existing is not None and existing.get("fingerprint") == self.key and not force:
                log.info("resuming sweep in %s", self.root)
                self.chunks.mkdir(parents=True, exist_ok=True)
                return
            if not force:
                changed = _differences(existing.get("config", {}), config)
                raise SweepMismatchError(
                    f"{self.root} holds a different sweep (differs in: {', '.join(changed) or 'details'}); {how}")
            self._discard("force=True")
        elif self._leftovers():
            if not force:
                raise SweepMismatchError(
                    f"{self.root} has sweep chunks or a result but no {self.MANIFEST}, so they belong to an unknown "
                    f"sweep (perhaps another model's) and cannot be reused; {how}")
            self._discard("force=True and no manifest")
        write_json(manifest, {"fingerprint": self.key, "config": config})
        self.chunks.mkdir(parents=True, exist_ok=True)

    def _leftovers(self) -> bool:
        has_chunks = self.chunks.is_dir() and any(self.chunks.iterdir())
        return has_chunks or any((self.root / name).exists() for name in self.RESULT)

    def _discard(self, why: str) -> None:
        n_files = sum(1 for _ in self.chunks.iterdir()) if self.chunks.is_dir() else 0
        log.warning("%s: discarding the previous sweep in %s (%d chunk files and its result)", why, self.root, n_files)
        (self.root / self.MANIFEST).unlink(missing_ok=True)
        for name in self.RESULT:
            (self.root / name).unlink(missing_ok=True)
        shutil.rmtree(self.chunks, ignore_errors=True)

    def _base(self, c: int) -> Path:
        return self.chunks / f"c{c:05d}_base.npz"

    def _block(self, c: int, g: int) -> Path:
        return self.chunks / f"c{c:05d}_f{g:05d}.npz"

    def _checksum(self, stem: str, arrays: Mapping[str, np.ndarray]) -> str:
        parts: list[Any] = [self.key, stem]
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            parts += [name, array.dtype.str, array.shape, array]
        return bytes_digest(*parts)

    def _write(self, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        write_npz(path, {**arrays, "fingerprint": np.array(self.key), "slot": np.array(path.stem),
                         "checksum": np.array(self._checksum(path.stem, arrays))})

    def _read(self, path: Path, fields: Sequence[str]) -> dict[str, np.ndarray] | None:
        """``fields`` of a chunk file that is intact and belongs here, else ``None`` (logged)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: np.array(data[name]) for name in data.files}
            fingerprint, slot, checksum = (str(arrays.pop(k)[()]) for k in ("fingerprint", "slot", "checksum"))
        except Exception as error:  # noqa: BLE001 - any failure to read means "recompute", which is always right
            log.warning("sweep chunk %s is unreadable (%s: %s); recomputing it", path.name, type(error).__name__, error)
            return None
        if fingerprint != self.key:
            problem = f"belongs to another sweep (fingerprint {fingerprint[:12]}, this one {self.key[:12]})"
        elif slot != path.stem:
            problem = f"was written as {slot}.npz (moved or copied)"
        elif sorted(arrays) != sorted(fields):
            problem = f"holds {sorted(arrays)} instead of {sorted(fields)}"
        elif checksum != self._checksum(path.stem, arrays):
            problem = "fails its checksum (corrupted)"
        else:
            return arrays
        log.warning("sweep chunk %s %s; recomputing it", path.name, problem)
        return None

    def save_base(self, c: int, clean: np.ndarray, source: np.ndarray, names: list[str]) -> None:
        self._write(self._base(c), {"clean": clean, "source": source, "names": np.array(names)})

    def save_block(self, c: int, g: int, values: np.ndarray) -> None:
        self._write(self._block(c, g), {"values": values})

    def load_base(self, c: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """``(clean, source, metric names)`` of chunk ``c``, if stored intact."""
        data = self._read(self._base(c), ("clean", "source", "names"))
        if data is None:
            return None
        return data["clean"], data["source"], [str(n) for n in data["names"]]

    def load_block(self, c: int, g: int) -> np.ndarray | None:
        """The patched values of forward ``g`` of chunk ``c``, if stored intact."""
        data = self._read(self._block(c, g), ("values",))
        return None if data is None else data["values"]


__all__ = ["SweepMismatchError", "content_key", "plan_interventions", "sweep", "sweep_identity"]
