"""COCO two-object spatial QA (spec §3.2): What'sUp's ``coco_qa_two_obj.json`` + COCO val2017 boxes.

Sources (public): the What'sUp benchmark's ``coco_qa_two_obj.json`` (Kamath et al., 2023) and COCO 2017
(``val2017/`` images, ``annotations/instances_val2017.json`` from ``annotations_trainval2017.zip``).

The JSON file is a list of ``[image_id, correct_caption, distractor_caption]``. Captions read
"A photo of a <subj> to the left|right of a <obj>" or "A photo of a <subj> above|below [of] a <obj>";
anything else is dropped. The truth is the correct caption's relation.

Example:
    >>> parse_caption("A photo of a dining table to the left of a refrigerator")
    ('dining table', 'left', 'refrigerator')
    >>> coco_prompt("dining table", "refrigerator", "horizontal", style="direct", order="rl")
    'Is the dining table to the right or to the left of the refrigerator? Answer with one word.'
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image

from ..images import to_rgb
from .canvas import Box
from .items import Entity, Item, ItemSet

QA_HINT = "the What'sUp benchmark's coco_qa_two_obj.json (public, Kamath et al., 2023)"
IMAGES_HINT = "COCO 2017 validation images (val2017, public, cocodataset.org)"
ANNOTATIONS_HINT = "COCO 2017 annotations (instances_val2017.json from annotations_trainval2017.zip, public)"

_HORIZONTAL = re.compile(r"^A photo of (?P<subj>.+?) to the (?P<rel>left|right) of (?P<obj>.+?)\.?$")
_VERTICAL = re.compile(r"^A photo of (?P<subj>.+?) (?P<rel>above|below) (?:of )?(?P<obj>.+?)\.?$")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)

AXIS_WORDS: MappingProxyType[str, tuple[str, str]] = MappingProxyType(
    {"horizontal": ("left", "right"), "vertical": ("above", "below")}
)

#: Prompt style per model: "relative" (Qwen, Pixtral) or "direct" (Gemma), spec §3.2.
COCO_PROMPT_STYLE: MappingProxyType[str, str] = MappingProxyType(
    {"qwen2_vl": "relative", "qwen2_5_vl": "relative", "pixtral": "relative", "llava": "relative",
     "gemma3": "direct"}
)


def strip_article(phrase: str) -> str:
    """Remove one leading a/an/the: ``"a hot dog"`` -> ``"hot dog"``."""
    return _ARTICLE.sub("", phrase.strip())


def parse_caption(caption: str) -> tuple[str, str, str] | None:
    """``(subject, relation, object)`` with articles removed, or None if the caption is not spatial."""
    text = caption.strip()
    m = _HORIZONTAL.match(text) or _VERTICAL.match(text)
    if m is None:
        return None
    return strip_article(m["subj"]), m["rel"], strip_article(m["obj"])


def axis_of(relation: str) -> str:
    for axis, words in AXIS_WORDS.items():
        if relation in words:
            return axis
    raise ValueError(f"unknown relation {relation!r}")


@dataclass(frozen=True)
class CocoRecord:
    """One spatial QA record; boxes are half-open pixel boxes once :func:`attach_boxes` has run."""

    image_id: int
    subject: str
    relation: str
    object: str
    axis: str
    caption: str
    distractor: str
    subject_box: Box | None = None
    object_box: Box | None = None


def parse_records(data: Sequence[Sequence[Any]]) -> list[CocoRecord]:
    """Records from the loaded JSON list, in file order; non-spatial captions are dropped."""
    out = []
    for entry in data:
        image_id, caption, distractor = int(entry[0]), str(entry[1]), str(entry[2])
        parsed = parse_caption(caption)
        if parsed is None:
            continue
        subj, rel, obj = parsed
        out.append(CocoRecord(image_id, subj, rel, obj, axis_of(rel), caption, distractor))
    return out


def load_coco_qa(path: str | os.PathLike[str]) -> list[CocoRecord]:
    """Parse a ``coco_qa_two_obj.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO two-object QA file not found: {path}. It is {QA_HINT}.")
    return parse_records(json.loads(path.read_text()))


def xywh_to_box(bbox: Sequence[float]) -> Box:
    """COCO ``[x, y, w, h]`` (floats) -> half-open integer ``(x0, y0, x1, y1)`` covering it."""
    x, y, w, h = (float(v) for v in bbox)
    return (math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h))


def load_instances(path: str | os.PathLike[str]) -> dict[int, dict[str, Box]]:
    """``image_id -> {category name (lowercase) -> box of its largest instance}`` from an instances file.

    The largest instance is the one with the largest bounding-box area (w*h); ties keep the first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}. It is {ANNOTATIONS_HINT}.")
    return instance_index(json.loads(path.read_text()))


def instance_index(data: dict[str, Any]) -> dict[int, dict[str, Box]]:
    """:func:`load_instances` on already-loaded JSON."""
    names = {int(c["id"]): str(c["name"]).lower() for c in data.get("categories", [])}
    best: dict[int, dict[str, tuple[float, Box]]] = {}
    for ann in data.get("annotations", []):
        name = names.get(int(ann["category_id"]))
        if name is None:
            continue
        x, y, w, h = ann["bbox"]
        area = float(w) * float(h)
        per_image = best.setdefault(int(ann["image_id"]), {})
        if name not in per_image or area > per_image[name][0]:
            per_image[name] = (area, xywh_to_box(ann["bbox"]))
    return {img: {name: box for name, (_, box) in cats.items()} for img, cats in best.items()}


def attach_boxes(records: Sequence[CocoRecord], instances: dict[int, dict[str, Box]]) -> list[CocoRecord]:
    """Copies of the records with subject/object boxes (case-insensitive name match; None if absent)."""
    out = []
    for r in records:
        cats = instances.get(r.image_id, {})
        out.append(replace(r, subject_box=cats.get(r.subject.lower()), object_box=cats.get(r.object.lower())))
    return out


def coco_prompt(subject: str, obj: str, axis: str, *, style: str = "relative", order: str = "lr") -> str:
    """The §3.2 question; ``order="rl"`` lists the two answer options in reverse."""
    if order not in ("lr", "rl"):
        raise ValueError(f"order must be 'lr' or 'rl', got {order!r}")
    subject, obj = strip_article(subject), strip_article(obj)
    if axis not in AXIS_WORDS:
        raise ValueError(f"axis must be 'horizontal' or 'vertical', got {axis!r}")
    a, b = AXIS_WORDS[axis]
    if order == "rl":
        a, b = b, a
    if style == "relative":
        question = "which side is the {s} on?" if axis == "horizontal" else "where is the {s} located?"
        return (f"Using the {obj} as the reference point, {question.format(s=subject)} "
                f"Answer with one word: {a} or {b}.")
    if style == "direct":
        if axis == "horizontal":
            return f"Is the {subject} to the {a} or to the {b} of the {obj}? Answer with one word."
        return f"Is the {subject} {a} or {b} the {obj}? Answer with one word."
    raise ValueError(f"style must be 'relative' or 'direct', got {style!r}")


def prompt_style_for(model: str) -> str:
    key = str(model).strip().lower().replace("-", "_").replace(".", "_")
    if key.startswith("pixtral"):
        key = "pixtral"
    if key not in COCO_PROMPT_STYLE:
        raise ValueError(f"no COCO prompt style for {model!r}; known: {', '.join(COCO_PROMPT_STYLE)}")
    return COCO_PROMPT_STYLE[key]


def coco_image_path(coco_dir: str | os.PathLike[str], image_id: int) -> Path:
    """``<coco_dir>/val2017/<image_id:012d>.jpg``."""
    return Path(coco_dir) / "val2017" / f"{int(image_id):012d}.jpg"


def load_coco_image(coco_dir: str | os.PathLike[str], image_id: int) -> Image.Image:
    path = coco_image_path(coco_dir, image_id)
    if not path.is_file():
        raise FileNotFoundError(f"COCO image not found: {path}. It is one of the {IMAGES_HINT}.")
    with Image.open(path) as im:
        rgb = to_rgb(im, str(path))
        return rgb.copy() if rgb is im else rgb  # the file closes on leaving the block


def eval_order(records: Sequence[CocoRecord], model: str) -> list[CocoRecord]:
    """Gemma evaluates vertical items first, then horizontal; other models keep file order."""
    if prompt_style_for(model) == "direct":
        return [r for r in records if r.axis == "vertical"] + [r for r in records if r.axis == "horizontal"]
    return list(records)


def clean_prediction(decoded: str) -> str:
    """A decoded answer token as compared with the truth: strip, lowercase, drop ``</s>``."""
    return decoded.replace("</s>", "").strip().lower()


def coco_item(record: CocoRecord, coco_dir: str | os.PathLike[str], *, style: str, order: str) -> Item:
    """One COCO item (no system message: ``metadata["system"]`` is None)."""
    entities = []
    if record.subject_box is not None and record.object_box is not None:
        subj_first = record.relation in ("left", "above")
        entities = [Entity(record.subject, 0 if subj_first else 1, record.subject_box),
                    Entity(record.object, 1 if subj_first else 0, record.object_box)]
    return Item(id=f"coco-{record.image_id}-{record.subject}-{record.relation}-{record.object}-{order}",
                image=load_coco_image(coco_dir, record.image_id),
                prompt=coco_prompt(record.subject, record.object, record.axis, style=style, order=order),
                answer=record.relation, direction=record.relation, orientation=record.axis, entities=entities,
                task="coco", metadata={"image_id": record.image_id, "subject": record.subject,
                                       "object": record.object, "order": order, "style": style, "system": None,
                                       "caption": record.caption})


def coco_items(records: Sequence[CocoRecord], coco_dir: str | os.PathLike[str], *, model: str | None = None,
               style: str | None = None, orders: Sequence[str] = ("lr", "rl"),
               require_files: bool = True) -> ItemSet:
    """Items for every record x listing order (``model`` picks the style and Gemma's evaluation order)."""
    if style is None:
        style = prompt_style_for(model) if model is not None else "relative"
    ordered = eval_order(records, model) if model is not None else list(records)
    if require_files:
        for r in ordered:
            path = coco_image_path(coco_dir, r.image_id)
            if not path.is_file():
                raise FileNotFoundError(f"COCO image not found: {path}. It is one of the {IMAGES_HINT}.")
    builders: list[Callable[[], Item]] = []
    for r in ordered:
        for order in orders:
            builders.append(_coco_builder(r, coco_dir, style, order))
    return ItemSet(builders, name="coco")


def _coco_builder(record: CocoRecord, coco_dir: str | os.PathLike[str], style: str, order: str) -> Callable[[], Item]:
    return lambda: coco_item(record, coco_dir, style=style, order=order)


QA_FILENAME = "coco_qa_two_obj.json"
ANNOTATIONS_RELPATH = Path("annotations") / "instances_val2017.json"


def coco_folder_items(folder: str | os.PathLike[str], model: str, *, orders: Sequence[str] = ("lr", "rl"),
                      require_files: bool = True) -> ItemSet:
    """Items from one data folder laid out as::

        <folder>/coco_qa_two_obj.json                   (What'sUp)
        <folder>/val2017/<image_id:012d>.jpg            (COCO val2017 images)
        <folder>/annotations/instances_val2017.json     (optional: adds entity boxes)
    """
    folder = Path(folder)
    records = load_coco_qa(folder / QA_FILENAME)
    annotations = folder / ANNOTATIONS_RELPATH
    if annotations.is_file():
        records = attach_boxes(records, load_instances(annotations))
    return coco_items(records, folder, model=model, orders=orders, require_files=require_files)
