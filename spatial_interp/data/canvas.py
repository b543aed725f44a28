"""Canvas geometry: how a square image maps onto a model's grid of visual tokens.

A canvas of ``n_tokens * token_px`` pixels is exactly one model image grid of ``n_tokens x n_tokens``
cells. Entities are ``entity_tokens x entity_tokens`` cells, separated by ``spacing_tokens`` cells
(spec §2.1/§2.2).

Conventions used everywhere in :mod:`spatial_interp.data`:

* pixel boxes are ``(x0, y0, x1, y1)`` in pixels, half-open (``x1``/``y1`` exclusive, like PIL crop);
* cells are ``(row, col)``; the flat id of a cell is ``row * n_tokens + col``.

Example:
    >>> g = canvas_for("qwen2_vl")
    >>> g.canvas_px, g.entity_px
    (336, 56)
    >>> g.slot_box(0, "horizontal")
    (28, 140, 84, 196)
    >>> g.slot_flat_ids(0, "horizontal")
    [61, 62, 73, 74]
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Box = tuple[int, int, int, int]
Cell = tuple[int, int]
Orientation = Literal["horizontal", "vertical"]

ORIENTATIONS: tuple[str, str] = ("horizontal", "vertical")


def _check_orientation(orientation: str) -> None:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")


@dataclass(frozen=True)
class CanvasGeometry:
    """Grid size ``n_tokens``, pixels per token ``token_px``, entity size and spacing in tokens."""

    n_tokens: int
    token_px: int
    entity_tokens: int
    spacing_tokens: int

    def __post_init__(self) -> None:
        for field in ("n_tokens", "token_px", "entity_tokens"):
            if getattr(self, field) <= 0:
                raise ValueError(f"CanvasGeometry.{field} must be positive")
        if self.spacing_tokens < 0:
            raise ValueError("CanvasGeometry.spacing_tokens must be >= 0")
        if 3 * self.entity_tokens + 2 * self.spacing_tokens > self.n_tokens:
            raise ValueError(f"three entities plus spacing do not fit on a {self.n_tokens}-token grid")

    @property
    def canvas_px(self) -> int:
        """Side of the square canvas in pixels (``n_tokens * token_px``)."""
        return self.n_tokens * self.token_px

    @property
    def entity_px(self) -> int:
        """Side of one entity in pixels (``entity_tokens * token_px``)."""
        return self.entity_tokens * self.token_px

    @property
    def n_cells(self) -> int:
        return self.n_tokens * self.n_tokens

    def flat(self, cell: Cell) -> int:
        """Flat id ``row * n_tokens + col`` of a cell."""
        r, c = cell
        return r * self.n_tokens + c

    def unflat(self, flat_id: int) -> Cell:
        return divmod(flat_id, self.n_tokens)

    # ----------------------------------------------------------------- three-slot layout (§2.2)
    def slot_shifts(self) -> tuple[int, ...]:
        """Every shift (in cells, along the axis) of the whole three-slot triple that keeps it on the canvas.

        ``0`` is the paper's layout; the same for both orientations (the canvas is square).

        >>> canvas_for("qwen2_vl").slot_shifts(), canvas_for("gemma3").slot_shifts()
        ((-1, 0, 1), (0, 1))
        """
        s, sp, n = self.entity_tokens, self.spacing_tokens, self.n_tokens
        extent = 3 * s + 2 * sp
        start = (n - extent) // 2
        return tuple(range(-start, n - extent - start + 1))

    def slot_origin(self, slot: int, orientation: str, shift: int = 0) -> Cell:
        """Token ``(row, col)`` of the top-left cell of slot 0/1/2 in the three-slot layout.

        ``shift`` moves the whole triple by that many cells along the axis (right / down when positive);
        it must be one of :meth:`slot_shifts`.
        """
        _check_orientation(orientation)
        if slot not in (0, 1, 2):
            raise ValueError(f"slot must be 0, 1 or 2, got {slot}")
        if isinstance(shift, bool) or not isinstance(shift, int):
            raise TypeError(f"shift must be an int number of cells, got {shift!r}")
        if shift not in self.slot_shifts():
            valid = self.slot_shifts()
            raise ValueError(f"shift {shift} moves the three-slot triple off the {self.n_tokens}-cell canvas; "
                             f"valid shifts are {valid[0]}..{valid[-1]}")
        s, sp, n = self.entity_tokens, self.spacing_tokens, self.n_tokens
        across = (n - s) // 2
        along = (n - (3 * s + 2 * sp)) // 2 + slot * (s + sp) + shift
        return (across, along) if orientation == "horizontal" else (along, across)

    def slot_box(self, slot: int, orientation: str, shift: int = 0) -> Box:
        """Half-open pixel box of a slot of the three-slot layout (``shift``: see :meth:`slot_origin`)."""
        r, c = self.slot_origin(slot, orientation, shift)
        return self.cell_block_box((r, c), self.entity_tokens)

    def slot_cells(self, slot: int, orientation: str) -> list[Cell]:
        """Cells of a slot, row-major."""
        return self.box_cells(self.slot_box(slot, orientation))

    def slot_flat_ids(self, slot: int, orientation: str) -> list[int]:
        return [self.flat(c) for c in self.slot_cells(slot, orientation)]

    # ----------------------------------------------------------------- pixel <-> cell
    def cell_block_box(self, origin: Cell, size_tokens: int) -> Box:
        """Pixel box of a ``size_tokens``-square block of cells whose top-left cell is ``origin``."""
        r, c = origin
        p = self.token_px
        return (c * p, r * p, (c + size_tokens) * p, (r + size_tokens) * p)

    def box_cells(self, box: Box, *, centres: bool = False) -> list[Cell]:
        """Cells (row-major) that share at least one pixel with a half-open pixel box.

        ``centres=True`` keeps only the cells whose centre lies in the box (the cells it mostly covers),
        so boxes that do not overlap never share a cell even off the cell grid (sub-cell layouts); for a
        box on cell boundaries both rules give the same cells.

        >>> g = canvas_for("qwen2_vl")
        >>> len(g.box_cells((10, 10, 66, 66))), g.box_cells((10, 10, 66, 66), centres=True)
        (9, [(0, 0), (0, 1), (1, 0), (1, 1)])
        """
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            return []
        p, n = self.token_px, self.n_tokens
        if centres:
            # centre of cell k is at (k + 1/2)·p: inside [a, b) iff a <= (k + 1/2)·p < b
            def inside(a: int, b: int) -> range:
                return range(max(0, -(-(2 * a - p) // (2 * p))), min(n, -(-(2 * b - p) // (2 * p))))
            return [(r, c) for r in inside(y0, y1) for c in inside(x0, x1)]
        c0, c1 = max(0, x0 // p), min(n, -(-x1 // p))
        r0, r1 = max(0, y0 // p), min(n, -(-y1 // p))
        return [(r, c) for r in range(r0, r1) for c in range(c0, c1)]

    def all_cells(self) -> list[Cell]:
        return [(r, c) for r in range(self.n_tokens) for c in range(self.n_tokens)]


CANVAS_PRESETS: MappingProxyType[str, CanvasGeometry] = MappingProxyType(
    {
        "qwen2_vl": CanvasGeometry(12, 28, 2, 2),
        "qwen2_5_vl": CanvasGeometry(12, 28, 2, 2),
        "gemma3": CanvasGeometry(16, 56, 3, 3),
        "pixtral": CanvasGeometry(15, 16, 2, 2),
        # the older Pixtral setting, under which the committed probing / criss-cross / last-token /
        # Table 5 artifacts were generated (spec §2.1)
        "pixtral_3x3": CanvasGeometry(15, 16, 3, 3),
        "llava": CanvasGeometry(24, 14, 4, 4),
    }
)


def canvas_for(name: str | CanvasGeometry) -> CanvasGeometry:
    """The canvas geometry preset for an architecture name (a CanvasGeometry passes through).

    >>> canvas_for("gemma3").canvas_px
    896
    """
    if isinstance(name, CanvasGeometry):
        return name
    key = str(name).strip().lower().replace("-", "_").replace(".", "_")
    if key not in CANVAS_PRESETS:
        raise ValueError(f"unknown canvas geometry {name!r}; known names: {', '.join(CANVAS_PRESETS)}")
    return CANVAS_PRESETS[key]


def geometry_name(geometry: CanvasGeometry) -> str | None:
    """The first preset name whose geometry equals ``geometry`` (None if it is a custom one)."""
    for key, value in CANVAS_PRESETS.items():
        if value == geometry:
            return key
    return None
