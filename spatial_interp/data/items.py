"""Items (one image + prompt + answer with ground truth) and datasets of items on disk.

A dataset is any sequence of :class:`Item`. The enumerations of this package return an
:class:`ItemSet`, a read-only sequence that renders each item when it is accessed, so that a
1344-item Objects set at 896 px does not sit in memory. ``list(item_set)`` materialises it.

On disk a dataset is a folder::

    dataset.json      format, number of items, sha256 content hash
    manifest.jsonl    one JSON object per item (everything but the image)
    images/00000.png  one PNG per item, in manifest order

It is written to a temporary sibling folder and renamed into place, so a folder either holds a
complete dataset or does not exist. The same items always give the same bytes and hash.

Example:
    >>> from spatial_interp.data import squares_items
    >>> items = squares_items("qwen2_vl")
    >>> len(items), items[0].prompt, items[0].answer
    (480, 'The color of the square to the left of the green square is ', 'red')
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     digest = save_dataset(items[:4], pathlib.Path(tmp) / "squares")
    ...     list(load_dataset(pathlib.Path(tmp) / "squares")) == list(items[:4])
    True
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from PIL import Image

from .canvas import Box, CanvasGeometry, Cell

FORMAT_NAME = "spatial_interp.dataset"
FORMAT_VERSION = 1


@dataclass
class Entity:
    """One drawn entity with its ground truth.

    ``name`` is the entity's answer string (colour for squares and shapes, object name for objects).
    ``slot`` is 0/1/2 = left/middle/right (or top/middle/bottom); for random layouts and grids it is
    the order index along the queried axis. ``box`` is the half-open pixel box it was drawn into.
    """

    name: str
    slot: int
    box: Box
    color: str | None = None
    shape: str | None = None

    def cells(self, geometry: CanvasGeometry, *, centres: bool = False) -> list[Cell]:
        """Grid cells (row-major) that the entity's box touches on ``geometry``'s grid (``centres=True``:
        only those whose centre lies in the box, see :meth:`CanvasGeometry.box_cells`)."""
        return geometry.box_cells(self.box, centres=centres)

    def flat_ids(self, geometry: CanvasGeometry, *, centres: bool = False) -> list[int]:
        return [geometry.flat(c) for c in self.cells(geometry, centres=centres)]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "slot": self.slot, "box": list(self.box), "color": self.color,
                "shape": self.shape}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entity:
        return cls(name=data["name"], slot=int(data["slot"]), box=tuple(int(v) for v in data["box"]),
                   color=data.get("color"), shape=data.get("shape"))


@dataclass
class Item:
    """One evaluation item: image, user prompt (trailing space kept), answer and ground truth."""

    id: str
    image: Image.Image
    prompt: str
    answer: str
    direction: str
    orientation: str
    entities: list[Entity]
    task: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def entity_in_slot(self, slot: int) -> Entity:
        for ent in self.entities:
            if ent.slot == slot:
                return ent
        raise KeyError(f"item {self.id} has no entity in slot {slot}")

    def canvas_geometry(self) -> CanvasGeometry | None:
        """The synthetic canvas the item was rendered on (from ``metadata["geometry"]``), if any."""
        geom = self.metadata.get("geometry")
        return CanvasGeometry(*geom) if geom else None

    def manifest_record(self) -> dict[str, Any]:
        """Everything but the image, as JSON-ready data."""
        return {"id": self.id, "prompt": self.prompt, "answer": self.answer, "direction": self.direction,
                "orientation": self.orientation, "task": self.task,
                "entities": [e.to_json() for e in self.entities], "metadata": self.metadata}


class ItemSet(Sequence[Item]):
    """A read-only sequence of items built on access from per-item builder functions."""

    def __init__(self, builders: Sequence[Callable[[], Item]], name: str = "") -> None:
        self._builders = list(builders)
        self.name = name

    @classmethod
    def from_items(cls, items: Iterable[Item], name: str = "") -> ItemSet:
        return cls([_constant(it) for it in items], name=name)

    def __len__(self) -> int:
        return len(self._builders)

    @overload
    def __getitem__(self, index: int) -> Item: ...
    @overload
    def __getitem__(self, index: slice) -> ItemSet: ...
    def __getitem__(self, index: int | slice) -> Item | ItemSet:
        if isinstance(index, slice):
            return ItemSet(self._builders[index], name=self.name)
        return self._builders[index]()

    def __iter__(self) -> Iterator[Item]:
        for build in self._builders:
            yield build()

    def take(self, indices: Iterable[int]) -> ItemSet:
        """The items at ``indices``, in that order, still built on access (nothing is rendered here)."""
        return ItemSet([self._builders[i] for i in indices], name=self.name)

    def __repr__(self) -> str:
        return f"ItemSet(name={self.name!r}, n={len(self)})"


def _constant(item: Item) -> Callable[[], Item]:
    return lambda: item


# --------------------------------------------------------------------------- serialisation


def _json_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding of an image (no metadata chunks)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _image_name(index: int) -> str:
    return f"images/{index:05d}.png"


def _encode(items: Iterable[Item]) -> Iterator[tuple[bytes, str, bytes]]:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            raise ValueError(f"duplicate item id {item.id!r}")
        seen.add(item.id)
        record = item.manifest_record()
        record["image"] = _image_name(i)
        yield _json_line(record), record["image"], png_bytes(item.image)


def _digest(lines: list[bytes], pngs: list[bytes]) -> str:
    h = hashlib.sha256()
    h.update(b"".join(lines))
    for blob in pngs:
        h.update(hashlib.sha256(blob).digest())
    return h.hexdigest()


def content_hash(items: Iterable[Item]) -> str:
    """sha256 of a dataset's manifest and PNG bytes: equal to what :func:`save_dataset` writes."""
    lines, pngs = [], []
    for line, _, blob in _encode(items):
        lines.append(line)
        pngs.append(blob)
    return _digest(lines, pngs)


def save_dataset(items: Iterable[Item], folder: str | os.PathLike[str], *, overwrite: bool = False,
                 name: str = "") -> str:
    """Write items to ``folder`` atomically; return the content hash.

    Raises FileExistsError if ``folder`` exists and ``overwrite`` is False.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    try:
        (tmp / "images").mkdir(parents=True)
        lines, pngs = [], []
        for line, image_name, blob in _encode(items):
            (tmp / image_name).write_bytes(blob)
            lines.append(line)
            pngs.append(blob)
        (tmp / "manifest.jsonl").write_bytes(b"".join(lines))
        digest = _digest(lines, pngs)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "n_items": len(lines), "sha256": digest,
                  "name": name}
        (tmp / "dataset.json").write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def _load_png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.copy()


def _item_from_record(record: dict[str, Any], folder: Path) -> Item:
    return Item(id=record["id"], image=_load_png(folder / record["image"]), prompt=record["prompt"],
                answer=record["answer"], direction=record["direction"], orientation=record["orientation"],
                entities=[Entity.from_json(e) for e in record["entities"]], task=record["task"],
                metadata=record.get("metadata", {}))


def read_header(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a spatial_interp dataset folder")
    header = json.loads(path.read_text())
    if header.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} header")
    return header


def load_dataset(folder: str | os.PathLike[str], *, verify: bool = True) -> ItemSet:
    """Load a dataset folder written by :func:`save_dataset` (images are read on access).

    With ``verify`` the content hash is recomputed from the files and checked against the header.
    """
    folder = Path(folder)
    header = read_header(folder)
    manifest = (folder / "manifest.jsonl").read_bytes()
    lines = manifest.splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    if len(records) != header["n_items"]:
        raise ValueError(f"{folder}: manifest has {len(records)} items, header says {header['n_items']}")
    if verify:
        pngs = [(folder / r["image"]).read_bytes() for r in records]
        digest = _digest(lines, pngs)
        if digest != header["sha256"]:
            raise ValueError(f"{folder}: content hash {digest} does not match the header {header['sha256']}")
    return ItemSet([_record_builder(r, folder) for r in records], name=header.get("name", ""))


def _record_builder(record: dict[str, Any], folder: Path) -> Callable[[], Item]:
    return lambda: _item_from_record(record, folder)
