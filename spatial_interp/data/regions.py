"""Tabulated cell regions: criss-cross strip tilings (spec §6) and the hand-labelled What'sUp maps (§4, §6).

Regions here are plain data: :class:`CellRange` is a half-open ``rows x cols`` rectangle of grid cells
(``spatial_interp.geometry.Region`` can be built from ``.cells()``).

Example:
    >>> whatsup_probing_regions("chair", 12)["middle"]
    CellRange(rows=(3, 11), cols=(4, 8))
    >>> [b.cols for b in strip_bands("gemma3", "horizontal")]
    [(0, 5), (5, 11), (11, 16)]
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .canvas import Cell, canvas_for


def _frozen(value: Any) -> Any:
    """Read-only view of nested dicts (constant tables)."""
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value


class CellRange(NamedTuple):
    """Cells with ``rows[0] <= row < rows[1]`` and ``cols[0] <= col < cols[1]``."""

    rows: tuple[int, int]
    cols: tuple[int, int]

    def cells(self) -> list[Cell]:
        """Row-major list of ``(row, col)``."""
        return [(r, c) for r in range(*self.rows) for c in range(*self.cols)]

    def flat_ids(self, n_cols: int) -> list[int]:
        return [r * n_cols + c for r, c in self.cells()]

    def __len__(self) -> int:  # type: ignore[override]
        return max(0, self.rows[1] - self.rows[0]) * max(0, self.cols[1] - self.cols[0])


# --------------------------------------------------------------------------- synthetic strips (§6)

#: The reference code's three-band tiling of the grid (left, middle, right widths); the default.
#: LLaVA is not in the paper: its 24-cell canvas puts the slots at cells 2-5, 10-13 and 18-21, so three
#: equal bands of 8 each hold one slot with the same 2-cell margins on both sides.
STRIP_TILING: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {"qwen2_vl": (4, 4, 4), "qwen2_5_vl": (4, 4, 4), "gemma3": (5, 6, 5), "pixtral": (5, 5, 5),
     "pixtral_3x3": (5, 5, 5), "llava": (8, 8, 8)}
)
#: Paper Table 4 "strip / whitespace width" (not used by the reference code's regions).
PAPER_STRIP_WIDTH: MappingProxyType[str, int] = MappingProxyType({"qwen2_vl": 4, "gemma3": 3, "pixtral": 2})


def _key(model: str) -> str:
    return str(model).strip().lower().replace("-", "_").replace(".", "_")


def strip_bands(model: str, orientation: str, widths: tuple[int, int, int] | None = None) -> list[CellRange]:
    """The three bands (left, middle, right columns, or top, middle, bottom rows) tiling the grid.

    ``widths`` overrides the model's :data:`STRIP_TILING`; they must sum to the grid size.
    """
    if orientation not in ("horizontal", "vertical"):
        raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")
    n = canvas_for(model).n_tokens
    if widths is None:
        if _key(model) not in STRIP_TILING:
            raise ValueError(f"no strip tiling for {model!r}; pass widths= (known: {', '.join(STRIP_TILING)})")
        widths = STRIP_TILING[_key(model)]
    if sum(widths) != n:
        raise ValueError(f"strip widths {widths} do not tile a {n}-cell grid")
    bands, start = [], 0
    for w in widths:
        span = (start, start + w)
        bands.append(CellRange((0, n), span) if orientation == "horizontal" else CellRange(span, (0, n)))
        start += w
    return bands


# --------------------------------------------------------------------------- What'sUp probing labels (§4)

WHATSUP_REFERENCES: tuple[str, ...] = ("chair", "table", "armchair")

#: Hand-made boxes in 64ths of the image: label -> ((row_start, row_end), (col_start, col_end)).
WHATSUP_PROBING_BOXES_64: Mapping[str, Mapping[str, tuple[tuple[int, int], tuple[int, int]]]] = (
    _frozen({
        "chair": {"left": ((48, 60), (12, 24)), "middle": ((16, 60), (24, 40)), "right": ((48, 60), (40, 52))},
        "table": {"left": ((40, 60), (8, 16)), "middle": ((20, 60), (16, 48)), "right": ((40, 60), (48, 56))},
        "armchair": {"left": ((52, 60), (8, 20)), "middle": ((24, 60), (20, 44)), "right": ((52, 60), (44, 56))},
    })
)


def _frac_range(lo64: int, hi64: int, n: int) -> tuple[int, int]:
    start = int(lo64 / 64 * n)
    end = max(start + 1, min(n, round(hi64 / 64 * n)))  # round() is banker's rounding, as in the reference
    return start, end


def whatsup_probing_regions(reference: str, n: int) -> dict[str, CellRange]:
    """§4 labels of a reference object on an ``n x n`` grid: ``{"left", "middle", "right"} -> CellRange``.

    start = int(frac * n); end = max(start + 1, min(n, round(frac_end * n))). Regions may overlap.
    """
    if reference not in WHATSUP_PROBING_BOXES_64:
        raise ValueError(f"unknown What'sUp reference {reference!r}; known: {', '.join(WHATSUP_REFERENCES)}")
    return {label: CellRange(_frac_range(*rows, n), _frac_range(*cols, n))
            for label, (rows, cols) in WHATSUP_PROBING_BOXES_64[reference].items()}


def whatsup_label_box(reference: str, label: str, size: int) -> tuple[int, int, int, int]:
    """The §4 hand-made box of ``label`` as a half-open pixel box on a ``size`` px composite."""
    (r0, r1), (c0, c1) = WHATSUP_PROBING_BOXES_64[reference][label]
    return (c0 * size // 64, r0 * size // 64, c1 * size // 64, r1 * size // 64)


# --------------------------------------------------------------------------- What'sUp criss-cross maps (§6)

_R = CellRange
#: model -> reference -> {"object": (left, right), "strip": (left, right)} (spec §6 table).
WHATSUP_CRISS_CROSS: Mapping[str, Mapping[str, Mapping[str, tuple[CellRange, CellRange]]]] = _frozen({
    "qwen2_vl": {
        "chair": {"object": (_R((8, 11), (1, 4)), _R((8, 11), (8, 11))), "strip": (_R((0, 12), (0, 4)),
                                                                                   _R((0, 12), (8, 12)))},
        "table": {"object": (_R((6, 11), (0, 3)), _R((6, 11), (9, 12))), "strip": (_R((0, 12), (0, 3)),
                                                                                   _R((0, 12), (9, 12)))},
        "armchair": {"object": (_R((9, 11), (1, 4)), _R((9, 11), (8, 11))), "strip": (_R((0, 12), (0, 4)),
                                                                                      _R((0, 12), (8, 12)))},
    },
    "gemma3": {
        "chair": {"object": (_R((12, 15), (3, 6)), _R((12, 15), (10, 13))), "strip": (_R((0, 16), (0, 6)),
                                                                                      _R((0, 16), (10, 16)))},
        # left strip 6 columns, right strip 4: unequal sizes in the reference (treat as suspect, spec §6)
        "table": {"object": (_R((10, 15), (2, 4)), _R((10, 15), (12, 14))), "strip": (_R((0, 16), (0, 6)),
                                                                                      _R((0, 16), (12, 16)))},
        "armchair": {"object": (_R((13, 15), (2, 5)), _R((13, 15), (11, 14))), "strip": (_R((0, 16), (0, 5)),
                                                                                         _R((0, 16), (11, 16)))},
    },
})


def whatsup_criss_cross_regions(model: str, reference: str) -> Mapping[str, tuple[CellRange, CellRange]]:
    """Hand-labelled (left, right) object and strip regions of §6 for Qwen (12x12) or Gemma (16x16)."""
    key = _key(model)
    if key == "qwen2_5_vl":
        key = "qwen2_vl"  # same 12x12 grid of 28 px cells at 336 px
    if key not in WHATSUP_CRISS_CROSS:
        raise ValueError(f"no hand-labelled What'sUp criss-cross regions for {model!r} "
                         f"(the reference labels only {', '.join(WHATSUP_CRISS_CROSS)})")
    if reference not in WHATSUP_CRISS_CROSS[key]:
        raise ValueError(f"unknown What'sUp reference {reference!r}; known: {', '.join(WHATSUP_REFERENCES)}")
    return WHATSUP_CRISS_CROSS[key][reference]
