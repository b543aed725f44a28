"""One entry point for the items of every behavioural task (Table 1 / COCO), for the eval layer.

Example:
    >>> items = task_items("squares", "qwen2_vl")
    >>> len(items), system_text_for("squares") is not None, system_text_for("coco")
    (480, True, None)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .canvas import canvas_for
from .coco import QA_FILENAME, attach_boxes, coco_folder_items, coco_items, load_coco_qa, load_instances
from .items import ItemSet
from .prompts import SYSTEM_TEXT
from .tasks import objects_items, shapes_items, squares_items
from .whatsup import WHATSUP_SIZES, WhatsUpImages, whatsup_items

TASKS: tuple[str, ...] = ("squares", "shapes", "objects", "whatsup", "coco")


def whatsup_size_for(model: str) -> int:
    """Composite size of a model's What'sUp behaviour items (Qwen 336, Gemma 896, Pixtral 512; else the canvas)."""
    key = str(model).strip().lower().replace("-", "_").replace(".", "_")
    if key.startswith("pixtral"):
        key = "pixtral"
    return WHATSUP_SIZES.get(key, canvas_for(model).canvas_px)


def system_text_for(task: str) -> str | None:
    """The system text of a task's chat prompt: none for COCO (spec §3.2), the one-token text otherwise."""
    return None if task == "coco" else SYSTEM_TEXT


def task_items(task: str, model: str, *, tokenizer: Any = None, whatsup_dir: str | os.PathLike[str] | None = None,
               coco_dir: str | os.PathLike[str] | None = None, coco_qa: str | os.PathLike[str] | None = None,
               coco_annotations: str | os.PathLike[str] | None = None, size: int | None = None) -> ItemSet:
    """Items of ``task`` for ``model`` (a canvas preset name).

    ``whatsup`` needs ``whatsup_dir`` (and a ``tokenizer`` for the single-token filter); ``coco`` needs
    ``coco_dir`` (holding ``val2017/``) and ``coco_qa`` (the What'sUp JSON; default
    ``<coco_dir>/coco_qa_two_obj.json``, with ``<coco_dir>/annotations/instances_val2017.json`` used for
    boxes when present, see :func:`~spatial_interp.data.coco.coco_folder_items`); ``coco_annotations``
    adds boxes from another file.
    """
    if task == "squares":
        return squares_items(model)
    if task == "shapes":
        return shapes_items(model)
    if task == "objects":
        return objects_items(model)
    if task == "whatsup":
        if whatsup_dir is None:
            raise ValueError("the whatsup task needs whatsup_dir: the What'sUp controlled_images folder")
        return whatsup_items(WhatsUpImages(whatsup_dir), size or whatsup_size_for(model), tokenizer=tokenizer)
    if task == "coco":
        if coco_dir is None:
            raise ValueError("the coco task needs coco_dir (with val2017/) and coco_qa (coco_qa_two_obj.json, "
                             "default <coco_dir>/coco_qa_two_obj.json)")
        if coco_qa is None and coco_annotations is None:
            return coco_folder_items(coco_dir, model)
        records = load_coco_qa(coco_qa if coco_qa is not None else Path(coco_dir) / QA_FILENAME)
        if coco_annotations is not None:
            records = attach_boxes(records, load_instances(coco_annotations))
        return coco_items(records, coco_dir, model=model)
    raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
