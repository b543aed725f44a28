"""The one image-conversion policy: every picture a model sees becomes 8-bit RGB the same way.

``PIL``'s own ``convert("RGB")`` is wrong for two kinds of input a user may plausibly hand in:

* **high bit depth**: a 16-bit PNG (mode ``I;16`` or, on some Pillow versions, ``I``) is clipped
  at 255, so almost every pixel turns white; a float image (mode ``F``, e.g. values in ``0..1``)
  is truncated to black;
* **transparency**: ``RGBA`` / ``LA`` / ``PA`` and palette images with a transparent colour lose
  their alpha channel, so transparent pixels show whatever colour they happen to store (often black),
  not the white background every stimulus is drawn on.

:func:`to_rgb` therefore converts as follows, logging a warning whenever pixel values change:

* ``I;16*``: value / 257 (``0..65535`` → ``0..255``), rounded;
* ``I`` (32-bit integers): values already in ``0..255`` are kept; values in ``0..65535`` are taken
  as 16-bit (/ 257, how a 16-bit PNG opens on older Pillow); anything else is scaled from its own
  ``min..max`` to ``0..255``;
* ``F`` (32-bit floats): values in ``0..1`` are × 255; values in ``0..255`` are kept; anything else is
  scaled from its own ``min..max``; NaN or infinite pixels are refused;
* any alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P`` with ``transparency``): composited on
  opaque white; fully opaque images are converted without a warning;
* every other mode (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr`` …): Pillow's ``convert("RGB")`` (exact
  for these, so logged at debug level only).

Sizes are checked first, from the header alone (before any pixel is decoded or allocated): an image
with a zero side is refused, and so is one above :data:`MAX_IMAGE_PIXELS`.

Example:
    >>> from PIL import Image
    >>> from spatial_interp.images import to_rgb
    >>> deep = Image.new("I;16", (4, 4), 65535)
    >>> to_rgb(deep).getpixel((0, 0))
    (255, 255, 255)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 50_000_000
"""Largest image (width × height) accepted: 50 megapixels, far above any VLM's input resolution
(processors downscale to ~1–4 MP) and small enough that one RGB copy (150 MB) cannot exhaust memory."""

WHITE = (255, 255, 255)
"""The stimuli's background, which transparent pixels are composited on."""

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def check_image_size(size: Sequence[int], what: str = "image") -> tuple[int, int]:
    """``(width, height)`` as ints, or a ValueError naming the problem: a side of zero or less, a
    non-integer side, or more than :data:`MAX_IMAGE_PIXELS` pixels. Needs no pixels (call it before
    allocating an image of that size)."""
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"{what} size must be (width, height), got {size!r}") from None
    for name, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)):
            raise TypeError(f"{what} {name} must be an integer number of pixels, got {side!r}")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"{what} is {width}x{height} pixels: both sides must be >= 1 (an empty image has no "
                         "cells to map); give a real picture")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {width}x{height} = {width * height:,} pixels, more than the "
                         f"{MAX_IMAGE_PIXELS:,} allowed (spatial_interp.images.MAX_IMAGE_PIXELS); downscale it "
                         "first (VLM processors resize to a few megapixels anyway)")
    return width, height


def _scale_to_8bit(values: np.ndarray, mode: str, what: str) -> tuple[np.ndarray, str]:
    """``(uint8 array, description of the mapping)`` for an ``I;16*`` / ``I`` / ``F`` image's values."""
    values = values.astype(np.float64)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{what} (mode {mode}) has {bad} NaN or infinite pixels; replace them (e.g. "
                         "np.nan_to_num) before passing the image")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        return np.rint(values / 257.0).astype(np.uint8), "16-bit values divided by 257"
    if mode == "I" and lo >= 0 and hi <= 255:
        return np.rint(values).astype(np.uint8), "integer values already in 0..255 kept"
    if mode == "F" and lo >= 0 and hi <= 1:
        return np.rint(values * 255.0).astype(np.uint8), "float values in 0..1 multiplied by 255"
    if mode == "F" and lo >= 0 and hi <= 255:
        return np.rint(values).astype(np.uint8), "float values in 0..255 rounded"
    if hi == lo:
        return np.full(values.shape, int(np.clip(np.rint(lo), 0, 255)), dtype=np.uint8), \
            f"constant value {lo:g} clipped to 0..255"
    scaled = np.rint((values - lo) / (hi - lo) * 255.0).astype(np.uint8)
    return scaled, f"values scaled from their range {lo:g}..{hi:g} to 0..255"


def to_rgb(image: Image.Image, what: str = "image") -> Image.Image:
    """``image`` as 8-bit RGB under the module's policy (see the module docstring); ``what`` names the
    image in errors and warnings (e.g. ``"images[3]"``). An RGB image is returned as is."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"{what} is {type(image).__name__}, expected a PIL.Image.Image")
    check_image_size(image.size, what)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        values, how = _scale_to_8bit(np.asarray(image), mode, what)
        log.warning("%s: converted a %s image to 8-bit RGB (%s)", what, mode, how)
        return Image.fromarray(values, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "1") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        low, _ = rgba.getchannel("A").getextrema()
        if low == 255:
            return rgba.convert("RGB")
        transparent = int((np.asarray(rgba.getchannel("A")) < 255).sum())
        log.warning("%s: composited a %s image with %d transparent or translucent pixels on white %s "
                    "(the stimuli's background)", what, mode, transparent, WHITE)
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    try:
        converted = image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"{what}: cannot convert a {mode} image to RGB ({error}); convert it to RGB first") from None
    log.debug("%s: converted %s to RGB", what, mode)
    return converted
