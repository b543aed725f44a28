"""Qwen2.5-VL: Qwen2-VL's geometry, but the vision blocks see merge units in window order."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

from ...geometry import Grid
from .base import TinySpec
from .qwen2_vl import CLIP_MEAN, CLIP_STD, Qwen2VLAdapter, qwen_tokenizer


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    arch = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    canvas = "qwen2_5_vl"
    # The visual module's output has the window permutation undone: that is what is spliced.
    vision_out_module = "model.visual"
    vision_out_field = "pooler_output"

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

    def tokenizer(self, *, real_ids: bool = False):
        return qwen_tokenizer(real_ids=real_ids)

    def tiny(self, seed: int) -> TinySpec:
        tokenizer = self.tokenizer()
        ids = tokenizer.convert_tokens_to_ids
        config = Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "mrope", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
            ),
            vision_config=dict(
                depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                window_size=112, fullatt_block_indexes=[1, 3],
            ),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        )
        return TinySpec(config, self.processor(tokenizer))

    def processor(self, tokenizer) -> Qwen2_5_VLProcessor:
        image_processor = Qwen2VLImageProcessor(
            min_pixels=56 * 56, max_pixels=28 * 28 * 16384, image_mean=CLIP_MEAN, image_std=CLIP_STD
        )
        video_processor = Qwen2VLVideoProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD)
        return Qwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
            chat_template=tokenizer.chat_template,
        )

    def meta_config(self) -> Qwen2_5_VLConfig:
        """Qwen/Qwen2.5-VL-7B-Instruct."""
        return Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
            ),
            vision_config=dict(
                depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
            ),
        )
