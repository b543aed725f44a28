"""Fast batch encoding for training: exactly what the organism's processor produces, without its per-image overhead.

The real processors spend most of a training step converting and validating images one by one.
:class:`BatchEncoder` keeps their semantics but (1) tokenises each distinct prompt once with the
real processor and caches the rows, and (2) turns a stacked uint8 image batch into ``pixel_values``
with the processor's own resize / normalise / patchify steps. ``tests/organism`` checks the result
equals ``processor(text=..., images=...)`` for both architectures.

Example:
    >>> import numpy as np
    >>> from spatial_interp.training.encode import BatchEncoder
    >>> from spatial_interp.training.organisms import SPECS
    >>> enc = BatchEncoder(SPECS["qwen2_vl"].build_processor())
    >>> inputs = enc(np.full((2, 336, 336, 3), 255, np.uint8), ["The color of the square above the red square is "] * 2)
    >>> inputs["input_ids"].shape[0], inputs["pixel_values"].shape[1]
    (2, 1176)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as tvF

from .vocab import SYSTEM_TEXT


def render_chat(processor: Any, user_text: str, system: str | None = SYSTEM_TEXT) -> str:
    """The paper's chat prompt: optional system turn, then a user turn of [image, text], generation prompt."""
    messages: list[dict] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
    return processor.apply_chat_template(messages, add_generation_prompt=True)


class BatchEncoder:
    """Turn (uint8 images, user prompts) into model inputs identical to the processor's (left padded)."""

    def __init__(self, processor: Any, system: str | None = SYSTEM_TEXT) -> None:
        self.processor = processor
        self.system = system
        self.kind = type(processor.image_processor).__name__
        if self.kind not in ("Qwen2VLImageProcessor", "Gemma3ImageProcessor"):
            raise TypeError(f"BatchEncoder supports the Qwen2-VL and Gemma-3 processors, not {self.kind}")
        self._rows: dict[tuple[str, int], dict[str, Tensor]] = {}
        self.pad_id = int(processor.tokenizer.pad_token_id)

    def text_rows(self, prompt: str, size: int) -> dict[str, Tensor]:
        """Unpadded token rows of one prompt for a ``size``-px square image (cached)."""
        key = (prompt, size)
        if key not in self._rows:
            text = render_chat(self.processor, prompt, self.system)
            dummy = Image.new("RGB", (size, size), "white")
            enc = self.processor(text=[text], images=[[dummy]], return_tensors="pt")
            self._rows[key] = {k: v[0] for k, v in enc.items() if k not in ("pixel_values", "image_grid_thw")}
        return self._rows[key]

    def pixels(self, images: np.ndarray) -> dict[str, Tensor]:
        """``pixel_values`` (and ``image_grid_thw``) of a ``(B, H, W, 3)`` uint8 batch."""
        ip = self.processor.image_processor
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        if self.kind == "Gemma3ImageProcessor":
            size = [ip.size["height"], ip.size["width"]]
            if list(x.shape[-2:]) != size:
                x = tvF.resize(x, size, interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
            x = (x.float() * ip.rescale_factor - mean) / std
            return {"pixel_values": x}
        # Qwen2-VL: the processor's own target size (smart_resize), resampled as it does (bicubic, antialiased).
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(int(x.shape[-2]), int(x.shape[-1]), factor=ip.patch_size * ip.merge_size,
                            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
        if (h, w) != tuple(x.shape[-2:]):
            x = tvF.resize(x, [h, w], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
        # Patchify the uint8 pixels (4x less memory traffic than floats), then normalise in patch layout:
        # each patch vector is (channel, temporal, row, col), so the per-channel constants repeat.
        patches, gh, gw = ip.patchify(x, patch_size=ip.patch_size, merge_size=ip.merge_size,
                                      temporal_patch_size=ip.temporal_patch_size)
        per_channel = patches.shape[-1] // 3
        mean_vec = mean.flatten().repeat_interleave(per_channel)
        std_vec = std.flatten().repeat_interleave(per_channel)
        values = (patches.reshape(-1, patches.shape[-1]).float() * ip.rescale_factor - mean_vec) / std_vec
        grid = torch.tensor([[1, gh, gw]] * x.shape[0], dtype=torch.long)
        return {"pixel_values": values, "image_grid_thw": grid}

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> dict[str, Tensor]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        size = int(images.shape[2])
        rows = [self.text_rows(p, size) for p in prompts]
        length = max(int(r["input_ids"].shape[0]) for r in rows)
        out: dict[str, Tensor] = {}
        for key in rows[0]:
            fill = self.pad_id if key == "input_ids" else 0
            batch = torch.full((len(rows), length), fill, dtype=rows[0][key].dtype)
            for i, r in enumerate(rows):
                batch[i, length - r[key].shape[0]:] = r[key]  # left padding, as VLM.prepare does
            out[key] = batch
        out.update(self.pixels(images))
        return out
