"""Stimuli, items, pairs, What'sUp / COCO loaders, prompts and scoring.

This package depends only on Pillow (and torch in :mod:`.scoring`); it knows nothing about models
beyond a :class:`~spatial_interp.data.canvas.CanvasGeometry`.

Modules: ``canvas`` (geometry presets), ``palettes``, ``shapes`` / ``objects`` (sprites), ``stimuli``
(renderer and layouts), ``items`` (Item, datasets on disk), ``tasks`` (Squares / Shapes / Objects
enumerations, random layouts, grids, probing), ``pairs`` (last-token and criss-cross), ``references``
(ablation references), ``regions`` (strip tilings, hand-labelled What'sUp maps), ``whatsup``, ``coco``,
``prompts`` and ``scoring``.

Example:
    >>> import spatial_interp.data as sd
    >>> items = sd.squares_items("qwen2_vl")
    >>> len(items), items[0].answer, sd.canvas_for("qwen2_vl").canvas_px
    (480, 'red', 336)
"""

from . import prompts, scoring
from .canvas import CANVAS_PRESETS, CanvasGeometry, canvas_for
from .coco import CocoRecord, attach_boxes, coco_items, coco_prompt, load_coco_qa, load_instances
from .items import Entity, Item, ItemSet, content_hash, load_dataset, save_dataset
from .pairs import Pair, PairSet, build_pairs, criss_cross_pairs, last_token_pairs, last_token_squares_task
from .palettes import (
    BROWN_PALETTE,
    COLORS,
    LAST_TOKEN_PALETTE,
    OBJECTS,
    ORANGE_PALETTE,
    SHAPES,
    objects_for,
    palette_for,
    shape_pairs,
)
from .prompts import SYSTEM_TEXT, chat_messages, render_prompt
from .references import ablation_plan, isolated_middle, reference_images
from .regions import CellRange, strip_bands, whatsup_criss_cross_regions, whatsup_probing_regions
from .stimuli import Renderer, blank_canvas, grid_boxes, random_layout, three_slot_boxes
from .tasks import (
    Option,
    Task,
    empty_canvas_items,
    enumerate_items,
    grid_items,
    objects_items,
    probe_split,
    probing_items,
    random_layout_items,
    random_probing_items,
    shapes_items,
    squares_items,
    task_for,
)
from .whatsup import WhatsUpImages, whatsup_candidates, whatsup_items, whatsup_pairs

__all__ = [
    "BROWN_PALETTE", "CANVAS_PRESETS", "COLORS", "LAST_TOKEN_PALETTE", "OBJECTS", "ORANGE_PALETTE", "SHAPES",
    "SYSTEM_TEXT", "CanvasGeometry", "CellRange", "CocoRecord", "Entity", "Item", "ItemSet", "Option", "Pair",
    "PairSet", "Renderer", "Task", "WhatsUpImages", "ablation_plan", "attach_boxes", "blank_canvas", "build_pairs",
    "canvas_for", "chat_messages", "coco_items", "coco_prompt", "content_hash", "criss_cross_pairs",
    "empty_canvas_items", "enumerate_items", "grid_boxes", "grid_items", "isolated_middle", "last_token_pairs",
    "last_token_squares_task", "load_coco_qa", "load_dataset", "load_instances", "objects_for", "objects_items",
    "palette_for", "probe_split", "probing_items", "prompts", "random_layout", "random_layout_items",
    "random_probing_items", "reference_images", "render_prompt", "save_dataset", "scoring", "shape_pairs",
    "shapes_items", "squares_items", "strip_bands", "task_for", "three_slot_boxes", "whatsup_candidates",
    "whatsup_criss_cross_regions", "whatsup_items", "whatsup_pairs", "whatsup_probing_regions",
]
