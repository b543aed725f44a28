"""Labelled arrays: values with named axes and coordinates, saved with their provenance.

Every experiment result (a sweep, a steering run, a probe's heat map) is a :class:`LabelledArray`.
On disk it is two files written atomically: ``NAME.json`` (axes, coordinates, attributes,
provenance) and ``NAME.npz`` (the numbers), so it can be read without this package.

Example:
    >>> import numpy as np, tempfile, os
    >>> from spatial_interp.results import LabelledArray
    >>> a = LabelledArray(np.arange(6.0).reshape(2, 3), ("site", "metric"),
    ...                   {"site": ["lm_resid.0", "lm_resid.1"], "metric": ["c0", "c1", "c2"]})
    >>> float(a.sel(site="lm_resid.1", metric="c2"))
    5.0
    >>> path = os.path.join(tempfile.mkdtemp(), "result")
    >>> LabelledArray.load(a.save(path)).sel(metric="c0").values.tolist()
    [0.0, 3.0]
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "spatial_interp.labelled_array/1"
TEMP_SUFFIX = ".tmp"
"""Suffix of :func:`atomic_write`'s temporary siblings (``.NAME.XXXXXX.tmp``)."""

log = logging.getLogger(__name__)


class ResultError(ValueError):
    """A labelled array whose values, axes and coordinates do not agree, or a bad selection."""


# --- atomic files ----------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Write a file through a temporary sibling and rename it into place.

    A reader (or a resumed run) therefore never sees a half-written file, even if the process is
    killed mid-write. ``write`` receives the open temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write(path, lambda f: json.dump(data, f, indent=1, default=_json_default), binary=False)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    return atomic_write(path, lambda f: np.savez(f, **arrays))


class FolderLockedError(RuntimeError):
    """Another writer (process or thread) holds the folder's lock: two writers would corrupt each other."""


@contextlib.contextmanager
def folder_lock(root: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``root/.lock`` (``fcntl.flock``) for the ``with`` block.

    Fails at once (never waits) when another writer holds it, naming the folder. ``flock`` belongs to
    the open file, so it also excludes a second writer in the same process, and the kernel drops it
    when a killed writer's process dies: a stale lock file never blocks a resume. The file is left in
    place, since unlinking it would let a third writer lock a different inode.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError when held; other errors mean no lock either
        os.close(fd)
        raise FolderLockedError(
            f"{root} is in use: another {what} is writing there (it holds {path}); wait for it to finish, "
            "or pass a different out= folder") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking at the folder
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` left in ``folder`` (not recursive).

    Only call this while holding the folder's :func:`folder_lock`: a live writer's temporary file
    looks the same.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.endswith(TEMP_SUFFIX) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d stale temporary file(s) from %s", len(removed), folder)
    return removed


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# --- provenance ------------------------------------------------------------------------------------
def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The commit of the source tree this package runs from (``None`` outside a git checkout)."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_dirty(start: str | os.PathLike | None = None) -> bool | None:
    """Whether the checkout has uncommitted changes to tracked files (``None`` outside a git checkout)."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def provenance(vlm: Any = None, *, seed: int | None = None, config: Mapping[str, Any] | None = None) -> dict:
    """What produced a result: model id and revision, package and library versions, git commit, seed, config."""
    from importlib.metadata import PackageNotFoundError, version

    def _version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    record: dict[str, Any] = {
        "package": "spatial-interp",
        "package_version": _version("spatial-interp"),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "versions": {name: _version(name) for name in ("torch", "transformers", "nnsight", "numpy")},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "config": dict(config or {}),
    }
    if vlm is not None:
        info = vlm.info
        record["model"] = {"name": info.name, "revision": info.revision, "source": info.source,
                           "arch": vlm.arch, "dtype": str(vlm.dtype).replace("torch.", ""), **info.extra}
    return record


# --- the array -------------------------------------------------------------------------------------
Coord = str | int | float


@dataclass
class LabelledArray:
    """An ``np.ndarray`` with one name and one coordinate list per axis.

    Attributes:
        values: the numbers.
        axes: axis names, e.g. ``("metric", "site", "region", "pair")``.
        coords: for each axis, one label per index (strings, ints or floats).
        attrs: free JSON-able notes (units, metric definitions).
        provenance: see :func:`provenance`.
        extras: companion arrays saved alongside (e.g. a sweep's unpatched baselines).
    """

    values: np.ndarray
    axes: tuple[str, ...]
    coords: dict[str, list[Coord]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, LabelledArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values)
        self.axes = tuple(self.axes)
        if len(self.axes) != self.values.ndim:
            raise ResultError(f"{len(self.axes)} axis names {self.axes} for a {self.values.ndim}-d array "
                              f"of shape {self.values.shape}; give one name per dimension")
        if len(set(self.axes)) != len(self.axes):
            raise ResultError(f"axis names must be unique, got {self.axes}")
        coords = {}
        for axis, size in zip(self.axes, self.values.shape, strict=True):
            labels = list(self.coords.get(axis, range(size)))
            if len(labels) != size:
                raise ResultError(f"axis {axis!r} has {size} entries but {len(labels)} coordinates")
            coords[axis] = [_plain(v) for v in labels]
        unknown = set(self.coords) - set(self.axes)
        if unknown:
            raise ResultError(f"coordinates given for unknown axes {sorted(unknown)}; axes are {self.axes}")
        self.coords = coords

    # --- views ---
    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)

    def __float__(self) -> float:
        return float(self.values)

    def index(self, axis: str, label: Coord) -> int:
        """Position of ``label`` on ``axis``."""
        self._axis(axis)
        try:
            return self.coords[axis].index(_plain(label))
        except ValueError:
            shown = self.coords[axis][:10]
            raise ResultError(f"{label!r} is not on axis {axis!r}; first labels: {shown}") from None

    def sel(self, **labels: Coord | Sequence[Coord]) -> LabelledArray:
        """Select by coordinate labels; a single label drops its axis, a list keeps it."""
        return self.isel(**{
            axis: ([self.index(axis, v) for v in label] if _is_list(label) else self.index(axis, label))
            for axis, label in labels.items()
        })

    def isel(self, **indices: int | Sequence[int]) -> LabelledArray:
        """Select by integer positions; a single integer drops its axis, a list keeps it."""
        for axis in indices:
            self._axis(axis)
        index, axes, coords = [], [], {}
        for axis in self.axes:
            chosen = indices.get(axis, slice(None))
            if isinstance(chosen, slice):
                index.append(chosen)
                axes.append(axis)
                coords[axis] = self.coords[axis][chosen]
            elif _is_list(chosen):
                chosen = [int(i) for i in chosen]
                index.append(chosen)
                axes.append(axis)
                coords[axis] = [self.coords[axis][i] for i in chosen]
            else:
                index.append(int(chosen))
        values = self.values
        # One axis at a time: numpy would otherwise broadcast several index lists together.
        for dim in reversed(range(len(index))):
            values = values[(slice(None),) * dim + (index[dim],)]
        return LabelledArray(values, tuple(axes), coords, dict(self.attrs), dict(self.provenance))

    def reduce(self, axis: str, how: str = "mean") -> LabelledArray:
        """``mean`` / ``std`` / ``sum`` / ``max`` / ``min`` over one axis."""
        dim = self._axis(axis)
        try:
            fn = {"mean": np.mean, "std": np.std, "sum": np.sum, "max": np.max, "min": np.min}[how]
        except KeyError:
            raise ResultError(f"unknown reduction {how!r}; use mean, std, sum, max or min") from None
        axes = tuple(a for a in self.axes if a != axis)
        return LabelledArray(fn(self.values, axis=dim), axes, {a: self.coords[a] for a in axes},
                             dict(self.attrs), dict(self.provenance))

    def mean(self, axis: str) -> LabelledArray:
        return self.reduce(axis, "mean")

    def transpose(self, *axes: str) -> LabelledArray:
        if sorted(axes) != sorted(self.axes):
            raise ResultError(f"transpose needs a permutation of {self.axes}, got {axes}")
        order = [self.axes.index(a) for a in axes]
        return LabelledArray(self.values.transpose(order), axes, {a: self.coords[a] for a in axes},
                             dict(self.attrs), dict(self.provenance), dict(self.extras))

    def _axis(self, axis: str) -> int:
        if axis not in self.axes:
            raise ResultError(f"no axis {axis!r}; axes are {self.axes}")
        return self.axes.index(axis)

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape, strict=True))
        return f"LabelledArray({dims}, dtype={self.values.dtype})"

    # --- disk ---
    def _header(self) -> dict:
        return {"axes": list(self.axes), "coords": self.coords, "dtype": str(self.values.dtype),
                "shape": list(self.values.shape)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``PATH.json`` and ``PATH.npz`` (each atomically); returns ``PATH.json``."""
        meta_path, data_path = artifact_paths(path, ".npz")
        arrays = {"values": self.values}
        extras = {}
        for name, extra in self.extras.items():
            arrays[f"extra.{name}"] = extra.values
            extras[name] = {**extra._header(), "attrs": extra.attrs}
        write_npz(data_path, arrays)
        meta = {"format": FORMAT, **self._header(), "attrs": self.attrs, "provenance": self.provenance,
                "extras": extras}
        return write_json(meta_path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelledArray:
        """Read an array written by :meth:`save` (give ``PATH``, ``PATH.json`` or ``PATH.npz``)."""
        meta_path, data_path = artifact_paths(path, ".npz")
        if not meta_path.is_file() or not data_path.is_file():
            raise FileNotFoundError(f"need both {meta_path} and {data_path}; was the result saved there?")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ResultError(f"{meta_path} is not a labelled array (format {meta.get('format')!r})")
        with np.load(data_path, allow_pickle=False) as data:
            values = data["values"]
            extras = {
                name: cls(data[f"extra.{name}"], tuple(head["axes"]), head["coords"], head.get("attrs", {}))
                for name, head in meta.get("extras", {}).items()
            }
        return cls(values, tuple(meta["axes"]), meta["coords"], meta.get("attrs", {}), meta.get("provenance", {}),
                   extras)


def artifact_paths(path: str | os.PathLike, data_suffix: str) -> tuple[Path, Path]:
    """``(PATH.json, PATH<data_suffix>)`` of a two-file artifact, given ``PATH`` or either file's name."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".json", data_suffix) else base
    return base.with_name(base.name + ".json"), base.with_name(base.name + data_suffix)


def _plain(value: Any) -> Coord:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float)):
        return value
    return str(value)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, range))
