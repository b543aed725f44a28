"""What'sUp three-object composites (spec §3.1), their items and pairs (§5, §6).

The photos are the public What'sUp benchmark's ``controlled_images`` subset (Kamath et al., 2023), one
folder of files named ``<obj>_<relation>_<ref>.jpeg``; only ``left_of`` and ``right_of`` are used.
A composite for (left object, reference, right object) at size ``Z`` is the left half of
``<left>_left_of_<ref>.jpeg`` next to the right half of ``<right>_right_of_<ref>.jpeg``, each resized to
``Z x Z`` with bilinear resampling first.

Example (with a folder of What'sUp photos)::

    images = WhatsUpImages("path/to/controlled_images")
    items = whatsup_items(images, size=336, tokenizer=processor.tokenizer)
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image

from ..images import to_rgb
from .items import Entity, Item, ItemSet
from .pairs import KeepFn, PairSet, build_pairs
from .prompts import orientation_of, whatsup_prompt
from .regions import WHATSUP_REFERENCES, whatsup_label_box

RELATIONS = ("left_of", "right_of")

#: Composite size per model for behaviour, last-token and criss-cross (probing uses the canvas size).
WHATSUP_SIZES: MappingProxyType[str, int] = MappingProxyType(
    {"qwen2_vl": 336, "qwen2_5_vl": 336, "gemma3": 896, "pixtral": 512}
)

#: Candidate side objects per reference object (file stems), spec §3.1.
WHATSUP_CANDIDATES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "chair": (
        "bottle-of-orange-juice", "oven-mitt", "toy-cactus", "plate", "headphones", "pot", "water-bottle", "box",
        "plant", "banana", "mug", "blanket", "beer-bottle", "book", "cap", "orange", "bottle", "laptop", "knife",
        "scissors", "cup", "pan", "bottle-of-mustard", "pillow", "vase", "kettle", "bowl", "sunglasses",
        "water-filter", "lemon", "hat", "toilet-roll", "dragonfruit", "remote", "spatula", "painting", "helmet",
        "photograph", "shoes", "microphone", "scarf", "wineglass", "can", "ball-of-yarn",
    ),
    "table": (
        "kettle", "bowl", "dog", "sunglasses", "lamp", "chair", "toilet-roll", "dragonfruit", "spatula", "lemon",
        "helmet", "painting", "scarf", "wineglass", "ball-of-yarn", "plate", "plant", "banana", "chair2", "mug",
        "book", "phone", "orange", "cap", "bottle", "scissors", "cup", "pillow", "knife",
    ),
    "armchair": (
        "yarn", "water-bottle", "pan", "orange", "scarf", "cap", "bowl", "apple", "mug", "book", "soda-can",
        "beer-bottle", "glass", "cup", "glove", "tape", "bread", "bottle", "wineglass", "glasses", "can", "rose",
        "phone", "notepad", "plate", "headphones", "banjo", "remote", "sunglasses", "pillow", "laptop",
    ),
})

DATA_HINT = ("the public What'sUp benchmark (Kamath et al., 2023): put its controlled_images photos, "
             "named <obj>_left_of_<ref>.jpeg / <obj>_right_of_<ref>.jpeg, in that folder")


def halves_composite(left_photo: Image.Image, right_photo: Image.Image, size: int) -> Image.Image:
    """Left half of ``left_photo`` + right half of ``right_photo``, both resized (bilinear) to ``size``."""
    def fit(im: Image.Image) -> Image.Image:
        im = to_rgb(im, "What'sUp photo")
        return im if im.size == (size, size) else im.resize((size, size), Image.Resampling.BILINEAR)

    a, b = fit(left_photo), fit(right_photo)
    half = size // 2
    out = Image.new("RGB", (size, size))
    out.paste(a.crop((0, 0, half, size)), (0, 0))
    out.paste(b.crop((half, 0, size, size)), (half, 0))
    return out


class WhatsUpImages:
    """A folder of What'sUp controlled images."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, obj: str, relation: str, reference: str) -> Path:
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
        return self.root / f"{obj}_{relation}_{reference}.jpeg"

    def load(self, obj: str, relation: str, reference: str) -> Image.Image:
        path = self.path(obj, relation, reference)
        if not path.is_file():
            raise FileNotFoundError(f"What'sUp image not found: {path}. The data is {DATA_HINT}.")
        with Image.open(path) as im:
            rgb = to_rgb(im, str(path))
            return rgb.copy() if rgb is im else rgb  # the file closes on leaving the block

    def has(self, obj: str, reference: str) -> bool:
        """True if both the left_of and right_of photos of ``obj`` with ``reference`` exist."""
        return all(self.path(obj, rel, reference).is_file() for rel in RELATIONS)

    def sides(self, reference: str) -> list[str]:
        """Objects (sorted) that have both left_of and right_of photos with ``reference``."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"What'sUp image folder not found: {self.root}. The data is {DATA_HINT}.")
        found: dict[str, set[str]] = {}
        for p in self.root.glob(f"*_{reference}.jpeg"):
            stem = p.name[: -len(f"_{reference}.jpeg")]
            for rel in RELATIONS:
                if stem.endswith("_" + rel):
                    found.setdefault(stem[: -len(rel) - 1], set()).add(rel)
        return sorted(obj for obj, rels in found.items() if len(rels) == 2)

    def composite(self, left: str, reference: str, right: str, size: int) -> Image.Image:
        """``left`` on the left, ``reference`` split across the midline, ``right`` on the right."""
        return halves_composite(self.load(left, "left_of", reference), self.load(right, "right_of", reference), size)


def whatsup_candidates(reference: str, tokenizer: Any = None, images: WhatsUpImages | None = None) -> list[str]:
    """Candidate side objects of ``reference``, single-token filtered with ``tokenizer`` (if given) and
    restricted to objects with both photos in ``images`` (if given)."""
    if reference not in WHATSUP_CANDIDATES:
        raise ValueError(f"unknown What'sUp reference {reference!r}; known: {', '.join(WHATSUP_REFERENCES)}")
    names = list(WHATSUP_CANDIDATES[reference])
    if tokenizer is not None:
        from .scoring import single_token_filter

        names = single_token_filter(tokenizer, names)
    if images is not None:
        names = [n for n in names if images.has(n, reference)]
    return names


def whatsup_item(images: WhatsUpImages, slots: Sequence[str], direction: str, size: int, item_id: str) -> Item:
    """Item for slots ``(left, reference, right)`` queried in ``direction`` (left/right)."""
    left, ref, right = slots
    labelled = zip((left, ref, right), ("left", "middle", "right"), strict=True)
    entities = [Entity(name, slot, whatsup_label_box(ref, label, size))
                for slot, (name, label) in enumerate(labelled)]
    return Item(id=item_id, image=images.composite(left, ref, right, size), prompt=whatsup_prompt(direction, ref),
                answer=left if direction == "left" else right, direction=direction,
                orientation=orientation_of(direction), entities=entities, task="whatsup",
                metadata={"triple": [left, ref, right], "reference": ref, "size": size, "layout": "whatsup",
                          "sources": [images.path(left, "left_of", ref).name,
                                      images.path(right, "right_of", ref).name]})


def _item_builder(images: WhatsUpImages, slots: tuple[str, str, str], direction: str, size: int,
                  item_id: str) -> Callable[[], Item]:
    return lambda: whatsup_item(images, slots, direction, size, item_id)


def whatsup_items(images: WhatsUpImages, size: int, *, tokenizer: Any = None,
                  references: Sequence[str] = WHATSUP_REFERENCES,
                  candidates: dict[str, Sequence[str]] | None = None, require_files: bool = True) -> ItemSet:
    """Table 1 What'sUp items: per reference, every ordered (target, distractor) pair x (left, right).

    ``left`` shows (target, ref, distractor); ``right`` shows (distractor, ref, target); answer = target.
    Candidates default to :data:`WHATSUP_CANDIDATES` filtered by ``tokenizer``; with ``require_files``
    a candidate without both photos raises FileNotFoundError naming the missing path.
    """
    builders: list[Callable[[], Item]] = []
    for ref in references:
        names = list(candidates[ref]) if candidates is not None else whatsup_candidates(ref, tokenizer)
        if require_files:
            for n in names:
                for rel in RELATIONS:
                    p = images.path(n, rel, ref)
                    if not p.is_file():
                        raise FileNotFoundError(f"What'sUp image not found: {p}. The data is {DATA_HINT}.")
        for target, distractor in itertools.permutations(names, 2):
            for direction in ("left", "right"):
                slots = (target, ref, distractor) if direction == "left" else (distractor, ref, target)
                builders.append(_item_builder(images, slots, direction, size, f"whatsup-{len(builders):05d}"))
    return ItemSet(builders, name="whatsup")


def whatsup_side_pools(images: WhatsUpImages, tokenizer: Any = None, *, min_sides: int = 5,
                       references: Sequence[str] = WHATSUP_REFERENCES) -> dict[str, list[str]]:
    """Per usable reference: sides with both photos and single-token names (refs need >= ``min_sides``;
    the reference name itself must be single-token)."""
    from .scoring import is_single_token

    pools = {}
    for ref in references:
        if tokenizer is not None and not is_single_token(tokenizer, ref):
            continue
        sides = images.sides(ref)
        if tokenizer is not None:
            sides = [s for s in sides if is_single_token(tokenizer, s)]
        if len(sides) >= min_sides:
            pools[ref] = sides
    return pools


def _whatsup_sampler(pools: dict[str, list[str]], n_sides: int) -> Callable[[random.Random], tuple[str, ...]]:
    refs = sorted(pools)
    if not refs:
        raise ValueError("no What'sUp reference has enough usable side objects")

    def sample(rng: random.Random) -> tuple[str, ...]:
        ref = rng.choice(refs)
        sides = rng.sample(pools[ref], n_sides)
        return (sides[0], ref, *sides[1:])

    return sample


def whatsup_pairs(kind: str, images: WhatsUpImages, size: int, *, tokenizer: Any = None,
                  pools: dict[str, list[str]] | None = None, n_per_direction: int = 50, max_attempts: int = 2000,
                  seed: int = 0, keep: KeepFn | None = None) -> PairSet:
    """What'sUp last-token (``kind="last_token"``: (s0, ref, s2, s3, s4)) or criss-cross
    (``"criss_cross"``: (s0, ref, s2)) pairs, left/right only; the reference is drawn first, then sides."""
    pools = pools if pools is not None else whatsup_side_pools(images, tokenizer)
    n_sides = 4 if kind == "last_token" else 2

    def make(slots: Sequence[str], direction: str, item_id: str) -> Item:
        return whatsup_item(images, slots, direction, size, item_id)

    return build_pairs(kind, make, _whatsup_sampler(pools, n_sides), directions=("left", "right"),
                       n_per_direction=n_per_direction, max_attempts=max_attempts, seed=seed, keep=keep)


def whatsup_probing_tuples(images: WhatsUpImages, *, references: Sequence[str] = WHATSUP_REFERENCES,
                           seed: int = 42, n: int = 120) -> list[tuple[str, str, str]]:
    """§4 What'sUp probing tuples: every (left, ref, right) of distinct objects with both photos (no
    token filter), shuffled with ``random.Random(seed)``, the first ``n`` kept."""
    tuples = [(left, ref, right) for ref in references
              for left, right in itertools.permutations(images.sides(ref), 2)]
    random.Random(seed).shuffle(tuples)
    return tuples[:n]


def whatsup_probing_items(images: WhatsUpImages, size: int, **kwargs: Any) -> ItemSet:
    """Items (composites at the probing canvas size) for :func:`whatsup_probing_tuples`."""
    tuples = whatsup_probing_tuples(images, **kwargs)
    return ItemSet([_item_builder(images, t, "left", size, f"whatsup-probe-{i:05d}") for i, t in enumerate(tuples)],
                   name="whatsup-probe")
