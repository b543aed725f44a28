"""Qwen2.5-VL: Qwen2-VL's geometry, but the vision blocks see merge units in window order."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

from ...geometry import Grid
from .qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    arch = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    canvas = "qwen2_5_vl"
    # The visual module's output has the window permutation undone: that is what is spliced.
    vision_out_module = "model.visual"
    vision_out_field = "pooler_output"
    config_class = Qwen2_5_VLConfig
    processor_class = Qwen2_5_VLProcessor
    tiny_vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       window_size=112, fullatt_block_indexes=[1, 3])
    real_vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
    real_max_positions = 128000

    def n_vision_blocks(self, config: Any) -> int:
        return config.vision_config.depth

    def d_vision(self, config: Any) -> int:
        return config.vision_config.hidden_size

    def merge_order(self, grid: Grid, processor: Any, config: Any) -> Tensor:
        # Window attention tiles the merged grid into square windows (window_size pixels) and the
        # blocks see merge units window by window, row-major inside each window.
        vision = config.vision_config
        side = vision.window_size // vision.spatial_merge_size // vision.patch_size
        sequence = []
        for wr in range(0, grid.rows, side):
            for wc in range(0, grid.cols, side):
                for r in range(wr, min(wr + side, grid.rows)):
                    for c in range(wc, min(wc + side, grid.cols)):
                        sequence.append(r * grid.cols + c)
        return torch.argsort(torch.tensor(sequence))
