"""Colours, shapes and object sets of the synthetic tasks (spec §2.3-§2.6, §5).

All names are lowercase; prompts and answers use them as they are. RGB values follow the spec.

Example:
    >>> palette_for("qwen2_vl")
    ('red', 'green', 'blue', 'black', 'brown', 'gray')
    >>> palette_for("pixtral")[4]
    'orange'
    >>> shape_pairs(palette_for("gemma3"))[4]
    ('cross', 'brown')
"""

from __future__ import annotations

from types import MappingProxyType

RGB = tuple[int, int, int]

COLORS: MappingProxyType[str, RGB] = MappingProxyType(
    {
        "red": (255, 0, 0),
        "green": (0, 255, 0),
        "blue": (0, 0, 255),
        "black": (0, 0, 0),
        "brown": (150, 75, 0),
        "gray": (128, 128, 128),
        "orange": (255, 165, 0),
        "white": (255, 255, 255),
    }
)

#: Qwen / Gemma palette (dict order of the reference implementation).
BROWN_PALETTE: tuple[str, ...] = ("red", "green", "blue", "black", "brown", "gray")
#: Pixtral palette: Orange replaces Brown (Pixtral reads the thin brown cross as red).
ORANGE_PALETTE: tuple[str, ...] = ("red", "green", "blue", "black", "orange", "gray")
#: The 8-entry palette of the last-token and criss-cross squares settings (§2.3, §5).
LAST_TOKEN_PALETTE: tuple[str, ...] = ("red", "green", "blue", "black", "brown", "gray", "orange", "white")

#: The six shapes, in the fixed order that pairs them with the palette colours.
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "star", "cross", "heart")

#: The eight objects in the reference order (§2.5).
OBJECTS: tuple[str, ...] = ("orange", "apple", "pot", "bell", "hat", "rose", "key", "bomb")

_ORANGE_MODELS = ("pixtral", "pixtral_3x3")


def _norm_model(model: str) -> str:
    return str(model).strip().lower().replace("-", "_").replace(".", "_")


def palette_for(model: str) -> tuple[str, ...]:
    """The 6-colour palette a model's Squares/Shapes use: Orange for Pixtral, Brown otherwise."""
    return ORANGE_PALETTE if _norm_model(model) in _ORANGE_MODELS else BROWN_PALETTE


def shape_pairs(palette: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """The fixed (shape, colour) pairing: i-th shape with the i-th palette colour."""
    if len(palette) < len(SHAPES):
        raise ValueError(f"a shapes palette needs {len(SHAPES)} colours, got {len(palette)}")
    return list(zip(SHAPES, palette[: len(SHAPES)], strict=True))


def objects_for(model: str, *, drop_bomb_for_pixtral: bool = True) -> tuple[str, ...]:
    """Object set of a model: Pixtral drops "bomb" in behaviour / last-token / criss-cross (§2.5).

    Probing and the Table 5 ablation keep all eight: pass ``drop_bomb_for_pixtral=False``.
    """
    if drop_bomb_for_pixtral and _norm_model(model) in _ORANGE_MODELS:
        return tuple(o for o in OBJECTS if o != "bomb")
    return OBJECTS


def color_rgb(name: str) -> RGB:
    """RGB triple of a palette colour name (case-insensitive)."""
    key = name.strip().lower()
    if key not in COLORS:
        raise ValueError(f"unknown colour {name!r}; known colours: {', '.join(COLORS)}")
    return COLORS[key]
