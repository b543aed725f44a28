"""The six shape sprites of the Shapes task (spec §2.4).

Each sprite is drawn on a transparent ``L x L`` RGBA canvas (``L`` = entity side in pixels) without
anti-aliasing, so its alpha is 0 or 255, and is pasted onto the canvas with that alpha as the mask.
Coordinates are handed to Pillow as the spec computes them (floats included); Pillow truncates them
to whole pixels, and rectangle/ellipse end coordinates are inclusive.

Example:
    >>> sprite = shape_sprite("cross", 56, (255, 0, 0))
    >>> sprite.size, sprite.getpixel((19, 0)), sprite.getpixel((18, 0))[3]
    ((56, 56), (255, 0, 0, 255), 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from .palettes import SHAPES

RGB = tuple[int, int, int]


def _square(draw: ImageDraw.ImageDraw, size: int, fill: RGB) -> None:
    side = 0.8 * size
    off = (size - side) / 2
    draw.rectangle((off, off, off + side - 1, off + side - 1), fill=fill)


def _circle(draw: ImageDraw.ImageDraw, size: int, fill: RGB) -> None:
    diameter = 0.9 * size
    off = (size - diameter) / 2
    draw.ellipse((off, off, off + diameter - 1, off + diameter - 1), fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, size: int, fill: RGB) -> None:
    height = size * math.sqrt(3) / 2
    draw.polygon([(size / 2, 0), (0, height), (size - 1, height)], fill=fill)


def star_points(size: int) -> list[tuple[float, float]]:
    """The 10 star vertices: alternating radius 1 / 0.381966, x stretched to the full width."""
    unit = []
    for i in range(10):
        angle = i * math.pi / 5 - math.pi / 2
        radius = 1.0 if i % 2 == 0 else 0.381966
        unit.append((radius * math.cos(angle), radius * math.sin(angle)))
    x_scale = 1.0 / max(abs(x) for x, _ in unit)
    centre = radius_px = (size - 1) / 2
    return [(centre + radius_px * x * x_scale, centre + radius_px * y) for x, y in unit]


def _star(draw: ImageDraw.ImageDraw, size: int, fill: RGB) -> None:
    draw.polygon(star_points(size), fill=fill)


def _cross(draw: ImageDraw.ImageDraw, size: int, fill: RGB) -> None:
    width = size // 3
    off = (size - width) / 2
    draw.rectangle((off, 0, off + width - 1, size - 1), fill=fill)
    draw.rectangle((0, off, size - 1, off + width - 1), fill=fill)


def heart_points(size: int, n: int = 100) -> list[tuple[float, float]]:
    """The parametric heart, min-max normalised to ``[0, size-1]`` with y flipped."""
    ts = [2 * math.pi * i / n for i in range(n)]
    xs = [16 * math.sin(t) ** 3 for t in ts]
    ys = [13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t) for t in ts]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    span = size - 1
    return [
        ((x - x_lo) / (x_hi - x_lo) * span, (1 - (y - y_lo) / (y_hi - y_lo)) * span)
        for x, y in zip(xs, ys, strict=True)
    ]


def _heart(draw: ImageDraw.ImageDraw, size: int, fill: RGB) -> None:
    draw.polygon(heart_points(size), fill=fill)


_DRAWERS: MappingProxyType[str, Callable[[ImageDraw.ImageDraw, int, RGB], None]] = MappingProxyType({
    "square": _square,
    "circle": _circle,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "heart": _heart,
})


def shape_sprite(shape: str, size: int, color: RGB) -> Image.Image:
    """An ``size x size`` RGBA sprite of ``shape`` filled with ``color`` on a transparent background."""
    key = shape.strip().lower()
    if key not in _DRAWERS:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    if size <= 0:
        raise ValueError("sprite size must be positive")
    sprite = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    _DRAWERS[key](ImageDraw.Draw(sprite), size, tuple(color))
    return sprite


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``size x size`` mask of the opaque pixels of ``shape``'s sprite."""
    return np.asarray(shape_sprite(shape, size, (0, 0, 0)).getchannel("A")) > 0
