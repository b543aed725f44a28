"""Stimuli, items, pairs, What'sUp / COCO loaders, prompts and scoring.

This package depends only on Pillow and numpy (and torch in :mod:`.scoring`); it knows nothing about
models beyond a :class:`~spatial_interp.data.canvas.CanvasGeometry`.
"""

from .canvas import CANVAS_PRESETS, CanvasGeometry, canvas_for
from .items import Entity, Item, ItemSet, content_hash, load_dataset, save_dataset
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
from .stimuli import Renderer, grid_boxes, random_layout, three_slot_boxes
from .tasks import (
    Option,
    Task,
    enumerate_items,
    grid_items,
    objects_items,
    random_layout_items,
    shapes_items,
    squares_items,
    task_for,
)

__all__ = [
    "BROWN_PALETTE", "CANVAS_PRESETS", "COLORS", "LAST_TOKEN_PALETTE", "OBJECTS", "ORANGE_PALETTE", "SHAPES",
    "SYSTEM_TEXT", "CanvasGeometry", "Entity", "Item", "ItemSet", "Option", "Renderer", "Task", "canvas_for",
    "chat_messages", "content_hash", "enumerate_items", "grid_boxes", "grid_items", "load_dataset",
    "objects_for", "objects_items", "palette_for", "random_layout", "random_layout_items", "render_prompt",
    "save_dataset", "shape_pairs", "shapes_items", "squares_items", "task_for", "three_slot_boxes",
]
