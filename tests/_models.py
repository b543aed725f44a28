"""Cached tiny models shared by the test modules (import as ``from tests._models import tiny_model``)."""

from __future__ import annotations

import functools

TINY_NAMES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-gemma3", "tiny-llava", "tiny-pixtral"]


@functools.cache
def tiny_model(name: str):
    import spatial_interp as si

    return si.load(name, seed=0)
