"""Image geometry: pixels of the original image ↔ cells of the LM's token grid ↔ rows of each stream.

A **cell** is one visual token of the LM's image grid, addressed ``(row, col)``. A :class:`Region`
is a set of cells. An :class:`ImageLayout` (one per item of a batch, built by the architecture
adapter from what the processor actually produced) answers "which rows of this site's activation
hold this region?" for every site.

Example:
    >>> from spatial_interp.geometry import Grid, Region
    >>> grid = Grid(12, 12)
    >>> left_strip = Region.columns(grid, 0, 4)
    >>> obj = Region.cells(grid, [(5, 1), (5, 2), (6, 1), (6, 2)])
    >>> len(left_strip), len(left_strip - obj), obj.flat.tolist()
    (48, 44, [61, 62, 73, 74])

This module knows nothing about nnsight or model classes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

from .site import Site

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in pixels of the original image, half-open (x1, y1 exclusive)."""


class GeometryError(ValueError):
    """A box, region or layout that does not fit the image or grid it is used with."""


def _index(value: object, what: str) -> int:
    """``value`` as an int cell coordinate; a float (even 2.0), bool or string is refused rather than
    truncated, since ``int(2.7)`` would silently name a different cell."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # ints, numpy and 0-d torch integers
        except TypeError:
            pass
    raise TypeError(f"{what} must be an int, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class Grid:
    """The LM's image-token grid: ``rows`` × ``cols`` cells."""

    rows: int
    cols: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", _index(self.rows, "Grid rows"))
        object.__setattr__(self, "cols", _index(self.cols, "Grid cols"))
        if self.rows <= 0 or self.cols <= 0:
            raise GeometryError(f"grid must be positive, got {self.rows}x{self.cols}")

    @property
    def n_cells(self) -> int:
        return self.rows * self.cols

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


@dataclass(frozen=True)
class Region:
    """A set of cells of one grid, with set algebra (``|``, ``&``, ``-``).

    Iteration and :attr:`flat` are row-major, which is also how the swap pairing of two equally
    sized regions aligns cells (i-th cell of A ↔ i-th cell of B).
    """

    grid: Grid
    members: frozenset[tuple[int, int]] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        bad = [(r, c) for r, c in self.members if not (0 <= r < self.grid.rows and 0 <= c < self.grid.cols)]
        if bad:
            raise GeometryError(
                f"cells {sorted(bad)[:5]} lie outside the {self.grid} grid "
                f"(rows 0..{self.grid.rows - 1}, cols 0..{self.grid.cols - 1})"
            )

    # constructors -------------------------------------------------------------------------------
    @classmethod
    def all(cls, grid: Grid) -> Region:
        """Every cell of the grid."""
        return cls(grid, frozenset((r, c) for r in range(grid.rows) for c in range(grid.cols)))

    @classmethod
    def cells(cls, grid: Grid, cells: Iterable[tuple[int, int]]) -> Region:
        """Explicit ``(row, col)`` cells."""
        return cls(grid, frozenset((_index(r, "cell row"), _index(c, "cell col")) for r, c in cells))

    @classmethod
    def flat_ids(cls, grid: Grid, ids: Iterable[int]) -> Region:
        """Cells given as flat ids ``row * cols + col`` (the paper's token-id tables)."""
        ids = [_index(i, "flat id") for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < grid.n_cells]
        if bad:
            raise GeometryError(f"flat ids {bad[:5]} lie outside the {grid} grid (0..{grid.n_cells - 1})")
        return cls(grid, frozenset(divmod(i, grid.cols) for i in ids))

    @classmethod
    def rect(cls, grid: Grid, rows: tuple[int, int], cols: tuple[int, int]) -> Region:
        """Half-open row range × column range."""
        _check_range(rows, grid.rows, "rows")
        _check_range(cols, grid.cols, "cols")
        return cls(grid, frozenset((r, c) for r in range(*rows) for c in range(*cols)))

    @classmethod
    def columns(cls, grid: Grid, start: int, stop: int) -> Region:
        """Full-height band of columns ``[start, stop)`` (a vertical strip)."""
        return cls.rect(grid, (0, grid.rows), (start, stop))

    @classmethod
    def rows(cls, grid: Grid, start: int, stop: int) -> Region:
        """Full-width band of rows ``[start, stop)`` (a horizontal strip)."""
        return cls.rect(grid, (start, stop), (0, grid.cols))

    @classmethod
    def box(cls, layout: ImageLayout, box: Box, *, centres: bool = False) -> Region:
        """Cells touched by a pixel box of the original image (see :meth:`ImageLayout.box_to_cells`)."""
        return layout.box_to_cells(box, centres=centres)

    # algebra ------------------------------------------------------------------------------------
    def _same_grid(self, other: Region) -> None:
        if not isinstance(other, Region):
            raise TypeError(f"cannot combine Region with {type(other).__name__}")
        if other.grid != self.grid:
            raise GeometryError(f"regions on different grids ({self.grid} vs {other.grid})")

    def __or__(self, other: Region) -> Region:
        self._same_grid(other)
        return Region(self.grid, self.members | other.members)

    def __and__(self, other: Region) -> Region:
        self._same_grid(other)
        return Region(self.grid, self.members & other.members)

    def __sub__(self, other: Region) -> Region:
        self._same_grid(other)
        return Region(self.grid, self.members - other.members)

    def background(self, grid: Grid | None = None) -> Region:
        """Every cell of the grid not in this region."""
        if grid is not None and grid != self.grid:
            raise GeometryError(f"region is on {self.grid}, asked for background on {grid}")
        return Region.all(self.grid) - self

    # views --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(sorted(self.members))

    def __contains__(self, cell: object) -> bool:
        return cell in self.members

    @property
    def flat(self) -> Int[Tensor, " n"]:
        """Row-major flat ids ``row * cols + col``, ascending."""
        return torch.tensor([r * self.grid.cols + c for r, c in self], dtype=torch.long)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(row0, col0, row1, col1)`` half-open bounding rectangle."""
        if not self.members:
            raise GeometryError("an empty region has no bounds")
        rows = [r for r, _ in self.members]
        cols = [c for _, c in self.members]
        return min(rows), min(cols), max(rows) + 1, max(cols) + 1

    def __repr__(self) -> str:
        return f"Region({self.grid}, {len(self)} cells)"


def _check_range(span: tuple[int, int], size: int, what: str) -> None:
    start, stop = (_index(v, f"{what} range bound") for v in span)
    if not 0 <= start <= stop <= size:
        raise GeometryError(f"{what} range [{start}, {stop}) does not fit 0..{size}")


@dataclass(frozen=True)
class PixelTransform:
    """How the processor mapped original pixels to the processed image it tokenised.

    ``processed = original * scale - offset`` on each axis (a resize, then a crop of ``offset``
    pixels from the top-left). ``processed_size`` is ``(width, height)`` after both.
    """

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    processed_size: tuple[int, int]

    @classmethod
    def resize(cls, original: tuple[int, int], processed: tuple[int, int]) -> PixelTransform:
        """A plain (possibly anisotropic) resize from ``original`` to ``processed`` (width, height)."""
        (w, h), (pw, ph) = original, processed
        return cls(pw / w, ph / h, 0.0, 0.0, (pw, ph))

    def apply(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale_x - self.offset_x, y * self.scale_y - self.offset_y


@dataclass(frozen=True, eq=False)
class ImageLayout:
    """Geometry of one image of a prepared batch.

    All row indices are into the activation as :meth:`VLM.stream` returns it: LM sites are
    ``(batch, pos, d)`` and :meth:`indices` gives positions within row :attr:`batch_index`;
    vision sites are flattened to ``(rows, d)`` over the whole batch and :meth:`indices` gives
    global rows.
    """

    grid: Grid
    image_size: tuple[int, int]
    transform: PixelTransform
    cell_px: int
    batch_index: int
    lm_positions: Int[Tensor, " cells"]
    vision_out_rows: Int[Tensor, " cells"]
    vision_block_rows: Int[Tensor, "cells patches"]
    last_position: int

    def __post_init__(self) -> None:
        n = self.grid.n_cells
        for name in ("lm_positions", "vision_out_rows"):
            got = getattr(self, name).shape[0]
            if got != n:
                raise GeometryError(
                    f"{name} has {got} entries but the {self.grid} grid has {n} cells: the processor "
                    "produced a different number of image tokens than the layout expects"
                )
        if self.vision_block_rows.shape[0] != n:
            raise GeometryError(f"vision_block_rows has {self.vision_block_rows.shape[0]} cells, expected {n}")

    def indices(self, region: Region | None, site: Site) -> Int[Tensor, " n"]:
        """Rows of ``site``'s activation that hold ``region`` (``None`` = every cell).

        Cells come in row-major order; for vision blocks each cell contributes all of its patch
        rows, cell by cell. ``site.last_token`` gives the final position regardless of region.
        """
        if site.only_last_token:
            return torch.tensor([self.last_position], dtype=torch.long)
        if region is None:
            region = Region.all(self.grid)
        if region.grid != self.grid:
            raise GeometryError(f"region is on a {region.grid} grid but this image has a {self.grid} grid")
        flat = region.flat
        if site.kind == "lm_resid":
            return self.lm_positions[flat]
        if site.kind == "vision_out":
            return self.vision_out_rows[flat]
        return self.vision_block_rows[flat].reshape(-1)

    def box_to_cells(self, box: Box, *, centres: bool = False) -> Region:
        """Cells touched by a half-open pixel box of the original image.

        The box goes through the processor's own resize/crop; cells the crop removed are dropped.
        ``centres=True`` keeps only the cells whose centre lies in the box (the cells it mostly
        covers): then boxes that do not overlap never share a cell, even off the cell grid.
        """
        x0, y0, x1, y1 = box
        w, h = self.image_size
        if not (x1 > x0 and y1 > y0):
            raise GeometryError(f"box {box} is empty: need x1 > x0 and y1 > y0 (half-open pixels)")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise GeometryError(f"box {box} lies outside the {w}x{h} image (valid: 0 <= x0 < x1 <= {w}, "
                                f"0 <= y0 < y1 <= {h})")
        if centres:
            xs = [(b[0] + b[2]) / 2 for b in (self.cell_box(0, c) for c in range(self.grid.cols))]
            ys = [(b[1] + b[3]) / 2 for b in (self.cell_box(r, 0) for r in range(self.grid.rows))]
            return Region.cells(self.grid, [(r, c) for r, y in enumerate(ys) if y0 <= y < y1
                                            for c, x in enumerate(xs) if x0 <= x < x1])
        px0, py0 = self.transform.apply(x0, y0)
        px1, py1 = self.transform.apply(x1, y1)
        c0 = max(0, math.floor(px0 / self.cell_px + 1e-9))
        r0 = max(0, math.floor(py0 / self.cell_px + 1e-9))
        c1 = min(self.grid.cols, math.ceil(px1 / self.cell_px - 1e-9))
        r1 = min(self.grid.rows, math.ceil(py1 / self.cell_px - 1e-9))
        if c1 <= c0 or r1 <= r0:
            raise GeometryError(f"box {box} falls entirely outside the part of the image the processor kept")
        return Region.rect(self.grid, (r0, r1), (c0, c1))

    def cell_box(self, row: int, col: int) -> Box:
        """The original-image pixel box of one cell (inverse of the processor transform)."""
        t = self.transform
        x0 = (col * self.cell_px + t.offset_x) / t.scale_x
        y0 = (row * self.cell_px + t.offset_y) / t.scale_y
        return x0, y0, x0 + self.cell_px / t.scale_x, y0 + self.cell_px / t.scale_y
