"""Fixtures for the intervention tests: noise stimuli and a chat-template fallback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

PROMPT = "The color of the square to the left of the red square is "


def noise(size, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _fallback_render(vlm):
    def render(prompt, system=None):
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        return vlm.processor.apply_chat_template([{"role": "user", "content": content}],
                                                 add_generation_prompt=True, tokenize=False)
    return render


@pytest.fixture
def chat(monkeypatch):
    """Make ``vlm.prepare`` work before ``spatial_interp.data.prompts`` exists (a plain chat template)."""

    def use(vlm):
        try:
            import spatial_interp.data.prompts  # noqa: F401
        except ImportError:
            monkeypatch.setattr(vlm, "render", _fallback_render(vlm))
        return vlm

    return use
