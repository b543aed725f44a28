"""Collect activations at many sites for many items, streamed to disk chunk by chunk.

Items are consumed lazily (a generator of thousands of items is fine): each batch is run, its rows
are written as one ``.npy`` per site (atomically) and dropped, so peak memory depends on the batch,
not on the number of items. The result is an :class:`ActivationStore`: rows labelled by item id,
site and cell (flat id ``row * cols + col``; ``-1`` for a ``last_token`` site).

A collection does not resume: ``store.json`` is written last, so an interrupted run leaves a folder
that no :class:`ActivationStore` opens, and a finished store is never written over. While it runs,
``out/.lock`` (an ``fcntl.flock``) keeps a second writer out; temporary files of a killed writer
are removed when the next one starts, and ``store.json`` records a sha256 of every chunk file so
:meth:`ActivationStore.verify` can tell a damaged store from a good one.

Example:
    >>> import tempfile, spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.interventions.collect import collect
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> items = [(Image.new("RGB", (336, 336), c), "The color is ") for c in ("red", "blue", "green")]
    >>> store = collect(vlm, items, [si.site.vision_out, si.site.lm_resid(2).last_token],
    ...                 out=tempfile.mkdtemp(), batch_size=2, progress=False)
    >>> store.dense(si.site.vision_out).shape, store.dense("lm_resid.2.last_token").shape
    ((3, 144, 64), (3, 1, 64))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from ..models.vlm import DEFAULT_SYSTEM, VLM
from ..progress import progress_bar
from ..results import LabelledArray, atomic_write, folder_lock, provenance, remove_stale_temps, write_json, write_npz
from ..site import Site, parse
from .engine import Read, read_and_stop
from .examples import Example, RegionSpec, prepared_chunks, resolve_region

STORAGE = MappingProxyType({"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16})
STORE_FORMAT = "spatial_interp.activation_store/1"


class StoreError(ValueError):
    """A store folder that is missing, incomplete, or asked for something it does not hold."""


def _site_dir(site: Site | str) -> str:
    return str(site)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_storage(values: torch.Tensor, dtype: str) -> np.ndarray:
    values = values.detach().cpu()
    if dtype == "bfloat16":
        # numpy has no bfloat16: keep the raw 16 bits, converted back on load.
        return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return values.to(torch.float32).numpy().astype(STORAGE[dtype], copy=False)


def _from_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return torch.from_numpy(np.array(values, dtype=np.uint16).view(np.int16)).view(torch.bfloat16).float().numpy()
    return np.asarray(values, dtype=np.float32)


def collect(
    vlm: VLM,
    items: Iterable[Any],
    sites: Sequence[Site | str],
    regions: RegionSpec = None,
    out: str | os.PathLike = "activations",
    *,
    batch_size: int = 16,
    dtype: str = "float32",
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
    progress: bool = True,
    total: int | None = None,
) -> ActivationStore:
    """Run ``items`` in batches and store the rows of ``regions`` at every site under ``out``.

    Args:
        items: examples, ``(image, prompt)`` tuples or ``data`` items; any iterable, read lazily.
        sites: sites to read (``lm_resid(s).last_token`` stores the final position only).
        regions: which cells (a Region, a function ``(example, layout) -> Region``, or None for all).
        out: a new folder, or one without a finished store (it is locked while collecting; a second
            writer fails at once).
        dtype: storage precision: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``.
        total: number of items, for the progress bar's ETA when ``items`` is a generator.
    """
    if dtype not in STORAGE:
        raise ValueError(f"storage dtype must be one of {', '.join(STORAGE)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sites = [parse(s) if isinstance(s, str) else s for s in sites]
    if not sites:
        raise ValueError("collect() needs at least one site")
    for site in sites:
        vlm.check_site(site)
    root = Path(out)
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with folder_lock(root, "collect"):
        return _collect_locked(vlm, items, sites, regions, root, batch_size=batch_size, dtype=dtype, system=system,
                               remote=remote, progress=progress, total=total)


def _collect_locked(vlm: VLM, items: Iterable[Any], sites: Sequence[Site], regions: RegionSpec, root: Path, *,
                    batch_size: int, dtype: str, system: Any, remote: bool | str, progress: bool,
                    total: int | None) -> ActivationStore:
    """:func:`collect`'s work, run while holding ``root``'s lock."""
    if (root / "store.json").exists():
        raise StoreError(f"{root} already holds an activation store; choose a new out= folder, or delete {root} "
                         "(or open it with ActivationStore.open) instead of collecting into it again")
    remove_stale_temps(root)
    for site in sites:
        remove_stale_temps(root / _site_dir(site))

    widths: dict[str, int] = {}
    grids: dict[str, list[int]] = {}
    checksums: dict[str, str] = {}
    n_items, n_chunks = 0, 0
    with progress_bar(total=total, desc="collect", unit="item", disable=not progress) as bar:
        for chunk, batch in prepared_chunks(vlm, items, batch_size, system=system):
            reads, labels = [], []
            for site in sites:
                for example, layout in zip(chunk, batch.layouts, strict=True):
                    region = None if site.only_last_token else resolve_region(regions, example, layout)
                    positions = layout.indices(region, site)
                    if site.only_last_token:
                        cells = torch.tensor([-1])
                    else:
                        cells = region.flat.repeat_interleave(positions.numel() // max(len(region), 1))
                    rows = None if site.is_vision else torch.full_like(positions, layout.batch_index)
                    reads.append(Read(site, rows, positions))
                    labels.append(cells)
                    grids[example.name] = [layout.grid.rows, layout.grid.cols]
            # Nothing past the last read is needed (no logits are stored): the forward halts there.
            read_values = read_and_stop(vlm, batch, reads, remote=remote)
            ids = np.array([e.name for e in chunk])
            for s, site in enumerate(sites):
                parts = read_values[s * len(chunk):(s + 1) * len(chunk)]
                cells = labels[s * len(chunk):(s + 1) * len(chunk)]
                values = torch.cat(parts)
                widths[str(site)] = int(values.shape[-1])
                item_index = np.concatenate([np.full(len(c), n_items + k) for k, c in enumerate(cells)])
                folder = root / _site_dir(site)
                stem = f"chunk_{n_chunks:06d}"
                array = _to_storage(values, dtype)
                written = [
                    atomic_write(folder / f"{stem}.npy", lambda f, array=array: np.save(f, array)),
                    write_npz(folder / f"{stem}.index.npz",
                              {"item": item_index.astype(np.int64), "cell": torch.cat(cells).numpy().astype(np.int32),
                               "ids": ids}),
                ]
                for path in written:  # read back from the page cache: what is on disk is what gets hashed
                    checksums[path.relative_to(root).as_posix()] = _file_sha256(path)
            n_items += len(chunk)
            n_chunks += 1
            bar.update(len(chunk))
    if n_items == 0:
        raise ValueError("collect() got no items")
    meta = {
        "format": STORE_FORMAT, "sites": [str(s) for s in sites], "dtype": dtype, "widths": widths,
        "n_items": n_items, "n_chunks": n_chunks, "grids": grids, "checksums": checksums,
        "provenance": provenance(vlm, config={"primitive": "collect", "sites": [str(s) for s in sites],
                                              "batch_size": batch_size, "dtype": dtype}),
    }
    write_json(root / "store.json", meta)
    return ActivationStore(root)


class ActivationStore:
    """Activations written by :func:`collect`, read back lazily (memory-mapped chunk files)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        manifest = self.root / "store.json"
        if not manifest.is_file():
            raise StoreError(f"{self.root} has no store.json: not a finished activation store "
                             "(collect() writes it last, so an interrupted run leaves none)")
        self.meta = json.loads(manifest.read_text())
        if self.meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{manifest} is not an activation store")

    @classmethod
    def open(cls, root: str | os.PathLike) -> ActivationStore:
        return cls(root)

    @property
    def sites(self) -> list[str]:
        return list(self.meta["sites"])

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    @property
    def provenance(self) -> dict:
        return self.meta.get("provenance", {})

    def _site(self, site: Site | str) -> str:
        key = str(site)
        if key not in self.sites:
            raise StoreError(f"site {key} was not collected; this store has {', '.join(self.sites)}")
        return key

    def item_ids(self) -> list[str]:
        """Item ids in collection order."""
        site = self.sites[0]
        out = []
        for c in range(self.meta["n_chunks"]):
            with np.load(self.root / site / f"chunk_{c:06d}.index.npz") as index:
                out += [str(i) for i in index["ids"]]
        return out

    def grid(self, item_id: str) -> tuple[int, int]:
        rows, cols = self.meta["grids"][item_id]
        return rows, cols

    def chunks(self, site: Site | str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(values float32 (rows, d), item index (rows,), cell (rows,))`` one chunk at a time."""
        key = self._site(site)
        for c in range(self.meta["n_chunks"]):
            values = np.load(self.root / key / f"chunk_{c:06d}.npy", mmap_mode="r")
            with np.load(self.root / key / f"chunk_{c:06d}.index.npz") as index:
                yield _from_storage(values, self.dtype), index["item"], index["cell"]

    def rows(self, site: Site | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows of a site: ``(values (rows, d), item index (rows,), cell (rows,))``."""
        parts = list(self.chunks(site))
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]

    def dense(self, site: Site | str) -> LabelledArray:
        """``(item, cell, d)`` labelled array, when every item has the same cells."""
        values, item, cell = self.rows(site)
        n = self.meta["n_items"]
        per_item = np.bincount(item, minlength=n)
        if len(set(per_item.tolist())) != 1:
            raise StoreError(f"items have different numbers of rows at {site}; use rows() or chunks()")
        k = int(per_item[0])
        cells = cell[:k]
        if not (cell.reshape(n, k) == cells).all():
            raise StoreError(f"items hold different cells at {site}; use rows() or chunks()")
        return LabelledArray(values.reshape(n, k, -1), ("item", "cell", "d"),
                             {"item": self.item_ids(), "cell": cells.tolist()},
                             attrs={"site": str(site)}, provenance=self.provenance)

    def verify(self) -> None:
        """Check every chunk file against the sha256 recorded when it was written (reads them all).

        Raises:
            StoreError: naming the files that are missing or differ (the store must be collected again).
        """
        checksums = self.meta.get("checksums")
        if checksums is None:
            raise StoreError(f"{self.root} records no checksums (written by an older version); it cannot be verified")
        bad = []
        for name, expected in sorted(checksums.items()):
            path = self.root / name
            if not path.is_file():
                bad.append(f"{name} (missing)")
            elif _file_sha256(path) != expected:
                bad.append(f"{name} (changed or corrupted)")
        if bad:
            raise StoreError(f"{self.root} is damaged: {', '.join(bad[:10])}"
                             f"{f' and {len(bad) - 10} more' if len(bad) > 10 else ''}; collect it again into a new "
                             "out= folder")

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.root)!r}, items={self.meta['n_items']}, sites={self.sites})"


__all__ = ["ActivationStore", "Example", "StoreError", "collect"]
