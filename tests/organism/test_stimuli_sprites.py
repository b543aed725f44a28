"""The training renderer draws the data package's shape sprites and OpenMoji glyphs (spec §2.4, §2.5)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spatial_interp.data.objects import OBJECT_CODEPOINTS, codepoint_glyph, object_sprite
from spatial_interp.data.shapes import shape_sprite
from spatial_interp.training import vocab
from spatial_interp.training.stimuli import Canvas, Entity, Renderer, Scene

# Entity sides the organisms see: random layouts scale the entity by 0.75..1.1 (42..62 px on the Qwen
# canvas, 126..185 px on the Gemma one), plus the paper's fixed 56/84/168 px.
SIDES = [*range(42, 63), 84, *range(126, 186)]
BIG = Canvas(16, 56, 3, 3)


def _row(kinds: list[str], names: list[str], side: int, task: str) -> Scene:
    """Three entities of ``side`` px in a row, 10 px apart."""
    ents = []
    for i, (kind, name) in enumerate(zip(kinds, names, strict=True)):
        x = 10 + i * (side + 10)
        ents.append(Entity(name, kind, (x, 20, x + side, 20 + side), name if task == "shapes" else None))
    return Scene(task, "left", tuple(ents), BIG)  # type: ignore[arg-type]


def _on_white(size: int, sprites: list[tuple[Image.Image, tuple[int, int]]]) -> np.ndarray:
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    for sprite, xy in sprites:
        canvas.alpha_composite(sprite, xy)
    return np.asarray(canvas.convert("RGB")).astype(int)


def test_shapes_are_the_data_sprites():
    """Every shape at every training size: identical pixels to ``shape_sprite`` composited on white."""
    renderer = Renderer()
    colours = list(vocab.COLOURS)
    for side in SIDES:
        for start in (0, 3):
            shapes = list(vocab.SHAPES[start:start + 3])
            names = [colours[(side + i) % len(colours)] for i in range(3)]
            scene = _row(shapes, names, side, "shapes")
            expected = _on_white(BIG.size, [(shape_sprite(s, side, vocab.COLOURS[n]), e.box[:2])
                                            for s, n, e in zip(shapes, names, scene.entities, strict=True)])
            assert np.array_equal(renderer.render(scene), expected), (shapes, side)


def test_object_codepoints_agree():
    assert {name: vocab.OBJECTS[name] for name in vocab.PAPER_OBJECTS} == dict(OBJECT_CODEPOINTS)


@pytest.mark.parametrize("side", [42, 56, 84, 168])
def test_objects_are_the_data_glyphs(side):
    """Objects are the data package's glyph (218 px font, 256 px sheet) padded square and Lanczos-resized."""
    renderer = Renderer()
    names = list(vocab.OBJECTS)
    for start in range(0, len(names), 3):
        group = (names[start:start + 3] * 3)[:3]
        scene = _row(["object"] * 3, group, side, "objects")
        sprites = []
        for name, ent in zip(group, scene.entities, strict=True):
            glyph = codepoint_glyph(vocab.OBJECTS[name], font_size=218, sheet_px=256)
            g = max(glyph.size)
            square = Image.new("RGBA", (g, g), (0, 0, 0, 0))
            square.paste(glyph, ((g - glyph.size[0]) // 2, (g - glyph.size[1]) // 2))
            sprites.append((square.resize((side, side), Image.Resampling.LANCZOS), ent.box[:2]))
        # Pillow composites in integers, the renderer in floats: rounding may differ by one level.
        diff = np.abs(renderer.render(scene).astype(int) - _on_white(BIG.size, sprites))
        assert diff.max() <= 1, (group, side)


@pytest.mark.parametrize("side", [42, 56, 168])
def test_objects_look_like_the_data_sprites(side):
    """The two pipelines crop and resample differently, but each object is nearest its own data sprite."""
    renderer = Renderer()
    names = list(vocab.PAPER_OBJECTS)
    data = {n: _on_white(side, [(object_sprite(n, side), (0, 0))]) for n in names}
    for start in range(0, len(names), 3):
        group = (names[start:start + 3] * 3)[:3]
        image = renderer.render(_row(["object"] * 3, group, side, "objects")).astype(int)
        for i, name in enumerate(group):
            x = 10 + i * (side + 10)
            crop = image[20:20 + side, x:x + side]
            dist = {n: np.abs(crop - v).mean() for n, v in data.items()}
            assert min(dist, key=dist.get) == name and dist[name] < 25, (name, side, dist)
