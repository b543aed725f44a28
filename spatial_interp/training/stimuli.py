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
from PIL import Image

from ..data.objects import codepoint_glyph
from ..data.shapes import shape_mask
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
# Glyphs are drawn at 218 px on a 256 px sheet, the settings the shipped organisms were trained with;
# the sheet clips the hat's brim by a pixel a side, so it is kept to keep those pixels exact.
_GLYPH_FONT_PX = 218
_GLYPH_SHEET_PX = 256


class Renderer:
    """Draws scenes into uint8 RGB arrays; caches sprites per (kind, size) on the instance."""

    def __init__(self) -> None:
        self._masks: dict[tuple[str, int], np.ndarray] = {}
        self._glyphs: dict[str, Image.Image] = {}
        self._objects: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def _mask(self, shape: str, side: int) -> np.ndarray:
        key = (shape, side)
        if key not in self._masks:
            self._masks[key] = shape_mask(shape, side)
        return self._masks[key]

    def _object(self, name: str, side: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB and alpha (0..1) of an OpenMoji glyph fitted into a ``side`` px square."""
        key = (name, side)
        if key not in self._objects:
            if name not in self._glyphs:
                self._glyphs[name] = codepoint_glyph(vocab.OBJECTS[name], font_size=_GLYPH_FONT_PX,
                                                     sheet_px=_GLYPH_SHEET_PX)
            glyph = self._glyphs[name]
            # Pad the tight crop to a square so the aspect ratio survives the resize (as a thumbnail would).
            g = max(glyph.size)
            square = Image.new("RGBA", (g, g), (0, 0, 0, 0))
            square.paste(glyph, ((g - glyph.size[0]) // 2, (g - glyph.size[1]) // 2))
            rgba = np.asarray(square.resize((side, side), Image.Resampling.LANCZOS)).astype(np.float32)
            self._objects[key] = rgba[..., :3], rgba[..., 3:] / 255.0
        return self._objects[key]

    def render(self, scene: Scene) -> np.ndarray:
        """``(H, W, 3)`` uint8 image of a scene on a white canvas."""
        return self.render_entities(scene.canvas, scene.task, scene.entities)

    def render_entities(self, canvas: Canvas, task: str, entities: Sequence[Entity]) -> np.ndarray:
        """``(H, W, 3)`` uint8 image of any entities of one task (none: the empty canvas)."""
        w = canvas.size
        image = np.full((w, w, 3), 255, dtype=np.uint8)
        for ent in entities:
            x0, y0, x1, y1 = ent.box
            side = x1 - x0
            if ent.kind == "object":
                rgb, alpha = self._object(ent.name, side)
                region = image[y0:y1, x0:x1].astype(np.float32)
                image[y0:y1, x0:x1] = np.round(rgb * alpha + region * (1 - alpha)).astype(np.uint8)
            elif ent.kind == "square" and task == "squares":
                image[y0:y1, x0:x1] = vocab.COLOURS[ent.name]
            else:
                mask = self._mask(ent.kind, side)
                image[y0:y1, x0:x1][mask] = vocab.COLOURS[ent.colour or ent.name]
        return image

    def image(self, scene: Scene) -> Image.Image:
        """The scene as a PIL image (what :meth:`VLM.prepare` takes)."""
        return Image.fromarray(self.render(scene))
